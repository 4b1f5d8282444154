"""The life of a raw batch between collect and the validation gate.

collect puts a new batch in data/raw and marks it pending, keeping the last validated batch aside
(.genloop/raw.previous). validate then accepts it (the copy aside is dropped) or rejects it: the batch
moves to artifacts/validate/rejected/ for inspection (one holding secrets to .genloop/quarantine/,
readable by its owner only, never among the artifacts) and the last validated batch returns to
data/raw, so a bad batch leaves data/ exactly as it was.
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


def reject(private: bool = False) -> str | None:
    """Undo the pending batch; returns where it went (None if data/raw was not a fresh batch).
    `private`: it holds secrets, so it goes where only its owner can read it."""
    if not paths.RAW_PENDING.exists():
        if private:  # not a fresh batch (data/raw was validated before?): still nothing readable by others
            _owner_only(paths.RAW)
        return None
    target = paths.QUARANTINE if private else paths.REJECTED
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if private:
        _owner_only(paths.RAW)  # before it moves: never readable by others on the way
    os.replace(paths.RAW, target)
    if paths.RAW_PREVIOUS.exists():
        os.replace(paths.RAW_PREVIOUS, paths.RAW)
    paths.RAW_PENDING.unlink()
    return str(target)


def _owner_only(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o700 if p.is_dir() else 0o600)


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
        before = (
            "data/raw holds the last validated batch again"
            if summary.get("restored", True)
            else "data/raw is empty: no batch of this source has passed yet"
        )
        lines.append(f"the rejected batch is in {summary['rejected']}; {before}")
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
    check_raw()
    return summary


def check_raw(raw: Path = paths.RAW) -> None:
    """Every file of data/raw as its manifest records it (sha256): a byte flipped in DVC's cache and
    restored by `dvc checkout` is refused here, not trained on. Files the manifest lacks are refused too."""
    from tasks.core.storage import sha256_file

    manifest = read_json(raw / "manifest.json")
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    changed = [p for p, digest in listed.items() if not (raw / p).is_file() or sha256_file(raw / p) != digest]
    present = {p.relative_to(raw).as_posix() for p in (raw / "files").rglob("*") if p.is_file()}
    extra = sorted(present - set(listed))
    if changed or extra:
        found = [f"{p} (changed or missing)" for p in changed[:5]] + [
            f"{p} (not in the manifest)" for p in extra[:5]
        ]
        raise GenloopError(
            f"data/raw is not what collect wrote: {', '.join(found)}"
            f"{' ...' if len(changed) + len(extra) > 10 else ''}; run `dvc checkout data/raw` from a good "
            "cache, or collect again (`dvc repro -f collect`)"
        )
