"""Where a model came from: the git commit and params it was trained with (its training run's own
record), the DVC hashes of its data and model, its source, manifest and validation."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tasks.core import paths
from tasks.core.storage import parse_yaml

TRACKED = ("data/raw", "data/processed", "artifacts/train/model")


def git() -> dict:
    def out(*args: str) -> str | None:
        proc = subprocess.run(["git", *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = out("rev-parse", "HEAD")
    dirty = out("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def dvc_hashes(lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """md5 of each tracked output as recorded in dvc.lock (what `dvc checkout` restores)."""
    if not lock.is_file():
        return {}
    stages = (parse_yaml(lock.read_text()) or {}).get("stages", {})
    found = {}
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out.get("path") in TRACKED and out.get("md5"):
                found[out["path"]] = out["md5"]
    return found


def record(training: dict) -> dict:
    """The lineage recorded with every registered model version and printed on its card; `training`
    is the training run's own record (tasks/training/fit.py: write_record), so the params and commit
    are those the model was trained with, whatever params.yaml holds now."""
    from tasks.core.storage import read_json, sha256_file

    summary = read_json(paths.VALIDATION_SUMMARY) if paths.VALIDATION_SUMMARY.is_file() else {}
    manifest = read_json(paths.MANIFEST) if paths.MANIFEST.is_file() else {}
    low = read_json(paths.LOW_RATED) if paths.LOW_RATED.is_file() else {"low": []}
    return {
        "git": training["git"],
        "dvc": dvc_hashes(),
        "source": manifest.get("source"),
        "manifest_sha256": sha256_file(paths.MANIFEST) if paths.MANIFEST.is_file() else None,
        "validation": {"success": summary.get("success"), "files": summary.get("files")},
        "params": training["params"],
        "tuned": training.get("tuned"),  # the values of params that came from a tuning study
        "auto": training.get("auto"),  # what params.yaml left to `auto`, and what the data made of it
        "trained": training.get("finished"),
        # the served samples people rated: those trained on (collect's record), the low-rated ones not
        "feedback": manifest.get("feedback"),
        "low_rated": {"count": len(low["low"]), "first": low["low"][:20]},
    }
