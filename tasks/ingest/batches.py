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

from tasks.core import paths
from tasks.core.errors import GenloopError
from tasks.core.storage import content_hash, read_json

MAX_FILES_LISTED = 20


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


def describe_failures(summary: dict) -> str:
    """The gate's verdict for people: one line per failed expectation, each saying what was expected,
    what was found (with a few files) and the param that would accept it."""
    lines = [
        f"validation failed: {len(summary['failures'])} expectation(s) not met on {summary['files']} files"
    ]
    for f in summary["failures"]:
        if f.get("message"):
            lines.append(f"  - {f['message']}")
            continue
        detail = (
            f"observed {f['observed']}"
            if f["observed"] is not None
            else f"{f['unexpected_count']} unexpected"
        )
        shown = f["files"][:MAX_FILES_LISTED]
        more = f" (+{len(f['files']) - len(shown)} more)" if len(f["files"]) > len(shown) else ""
        files = f"; files: {', '.join(shown)}{more}" if shown else ""
        lines.append(f"  - {f['expectation']}({f['column']}): {detail}{files}")
    if summary.get("rejected"):
        lines.append(
            f"the rejected batch is in {summary['rejected']}; data/raw holds the last validated batch again"
        )
    if summary.get("reference"):
        lines.append(
            f"the dataset's reference is {summary['reference']}: delete it to record a new one from the next "
            "batch that passes"
        )
    lines.append(f"data docs: {summary['data_docs']}  (nothing downstream was written)")
    return "\n".join(lines)


def require_passed() -> dict:
    """The gate for every later stage: data/raw must be exactly what validate passed."""
    summary = read_json(paths.VALIDATION_SUMMARY)
    if not summary.get("success"):
        raise GenloopError(
            "data/raw failed validation: fix the data and run validate again\n" + describe_failures(summary)
        )
    if not is_validated():
        raise GenloopError("data/raw changed since it was validated: run validate first")
    return summary
