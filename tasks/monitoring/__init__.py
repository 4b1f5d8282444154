"""The drift monitor's pieces: the reference kept with each version, reading the service logs, the
checks, the report."""
