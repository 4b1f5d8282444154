"""The life of a raw batch between collect and the validation gate.

collect puts a new batch in data/raw and marks it pending, keeping the last validated batch aside
(.genloop/raw.previous). validate then accepts it (the copy aside is dropped) or rejects it: the batch
moves to artifacts/validate/rejected/ for inspection and the last validated batch returns to data/raw,
so a bad batch leaves data/ exactly as it was.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tasks import paths
from tasks.storage import content_hash, read_json


def manifest_hash() -> str | None:
    return content_hash(read_json(paths.MANIFEST)) if paths.MANIFEST.is_file() else None


def is_validated() -> bool:
    """data/raw is exactly what the last passing validation saw."""
    if not paths.VALIDATION_SUMMARY.is_file():
        return False
    summary = read_json(paths.VALIDATION_SUMMARY)
    return bool(summary.get("success")) and summary.get("manifest_sha256") == manifest_hash()


def keep_aside() -> Path | None:
    """Where collect should move the batch it replaces: only a validated batch is worth keeping."""
    if paths.RAW_PENDING.exists() and is_validated():
        accept()  # validated without our hook running (e.g. DVC restored validate from its run cache)
    return None if paths.RAW_PENDING.exists() else paths.RAW_PREVIOUS


def mark_pending(source: str) -> None:
    paths.STATE.mkdir(exist_ok=True)
    paths.RAW_PENDING.write_text(source + "\n")


def accept() -> None:
    shutil.rmtree(paths.RAW_PREVIOUS, ignore_errors=True)
    paths.RAW_PENDING.unlink(missing_ok=True)


def reject() -> str | None:
    """Undo the pending batch; returns where it went (None if data/raw was not a fresh batch)."""
    if not paths.RAW_PENDING.exists():
        return None
    shutil.rmtree(paths.REJECTED, ignore_errors=True)
    paths.REJECTED.parent.mkdir(parents=True, exist_ok=True)
    os.replace(paths.RAW, paths.REJECTED)
    if paths.RAW_PREVIOUS.exists():
        os.replace(paths.RAW_PREVIOUS, paths.RAW)
    paths.RAW_PENDING.unlink()
    return str(paths.REJECTED)
