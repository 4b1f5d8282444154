"""What collect takes from data/feedback (written by the feedback stage, tasks/feedback.py)."""

from __future__ import annotations

from tasks.core import paths
from tasks.core.storage import read_json

MANIFEST = paths.FEEDBACK / "manifest.json"


def merge(source_files: int, max_share: float) -> list[tuple[dict, bytes]]:
    """The feedback files collect adds to `source_files` from the source: the highest rated first, at
    most max_share of the merged set (a model trained on its own samples without a bound degrades)."""
    if not MANIFEST.is_file():
        return []
    cap = int(max_share / (1 - max_share) * source_files)  # added / (source + added) <= max_share
    return [(f, (paths.FEEDBACK / f["path"]).read_bytes()) for f in read_json(MANIFEST)["files"][:cap]]
