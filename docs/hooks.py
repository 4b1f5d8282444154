"""MkDocs hook: write the generated references before the pages are read (genloop/reference.py)."""

from pathlib import Path


def on_pre_build(config: dict) -> None:  # MkDocs' config, read like a dict
    from genloop.reference import write

    project = Path(config["config_file_path"]).parent  # mkdocs may run from another folder
    write(Path(config["docs_dir"]) / "reference", project / "params.yaml")
