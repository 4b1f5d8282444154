"""What every stage shares: typed params, project paths, file I/O, the error users see, pictures, the
processed-data format, and the bridge that runs a stage from Prefect through DVC."""
