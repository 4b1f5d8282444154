"""collect: copy the source named by `data.source` into data/raw/ with a manifest of every file."""

from __future__ import annotations

from collections import Counter

from tasks.core import paths
from tasks.core.datasets import require_family_fits
from tasks.core.orchestration import publish_table, repro, task, transient
from tasks.core.params import Params, family_was_auto
from tasks.core.storage import content_hash, dumps, read_json, staged_dir
from tasks.ingest import batches
from tasks.ingest.sources import fetch, kind_of, peek_kind


def run(params: Params) -> dict:
    """Fetch the source into a staging folder and swap it in only when complete.

    A failure (empty source, unreachable endpoint, integrity error) leaves data/raw as it was. On
    success the replaced batch is kept until validate passes the new one (or puts the old one back);
    an unvalidated batch is never kept as "previous".
    """
    source = params.data.source
    # a family that cannot model this data stops here, before any fetch (`auto` fits any: an S3 source
    # of text is known to hold text only from this listing, and the stages after collect choose the GPT)
    if params.model is not None and not family_was_auto(params.model):
        require_family_fits(params.model.family, peek_kind(source, params.collect), f"data.source {source}")
    with staged_dir(paths.RAW, keep_previous=batches.keep_aside()) as stage:
        entries = sorted(fetch(source, stage, params.collect), key=lambda e: e.path)
        kind = kind_of([e.path for e in entries], source)
        added, record = with_feedback(params, stage, kind, len(entries))
        manifest = {"source": source, "kind": kind, "files": [e.as_dict() for e in entries + added]}
        if record is not None:
            manifest["feedback"] = record
        (stage / "manifest.json").write_text(dumps(manifest))
    batches.mark_pending(source)
    return summary(manifest)


def with_feedback(params: Params, stage, kind: str, source_files: int) -> tuple[list, dict | None]:
    """The highly rated samples of data/feedback (tasks/feedback.py) added to the batch: the best
    rated first, within retrain.max_synthetic_share of the whole. Files of another kind are left out."""
    from tasks.ingest.feedback import MANIFEST, merge
    from tasks.ingest.sources import SUFFIXES, put

    if params.retrain is None or not MANIFEST.is_file():
        return [], None
    share = params.retrain.max_synthetic_share
    offered = [(f, data) for f, data in merge(source_files, share) if SUFFIXES.get(f["path"][-4:]) == kind]
    added = [
        put(stage, f["path"].removeprefix("files/"), data, f"feedback:{f['sample_id']}@{f['model']}")
        for f, data in offered
    ]
    rated = len(read_json(MANIFEST)["files"])
    share_now = round(len(added) / max(source_files + len(added), 1), 4)
    record = {"rated": rated, "added": len(added), "left_out": rated - len(added),
              "max_synthetic_share": share, "share": share_now}  # fmt: skip
    return added, record


def summary(manifest: dict) -> dict:
    files = manifest["files"]
    labels = Counter(f["label"] for f in files if f["label"] is not None)
    return {
        "source": manifest["source"],
        "kind": manifest["kind"],
        "files": len(files),
        "bytes": sum(f["size"] for f in files),
        "labels": dict(sorted(labels.items())),
        "feedback": manifest.get("feedback", {}).get("added", 0),
        "manifest_sha256": content_hash(manifest),
    }


@task(name="collect", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=transient)
def collect_task(force: bool = False) -> dict:
    """Run the DVC stage `collect` (force: fetch again even if params and code are unchanged)."""
    repro("collect", force=force)
    result = summary(read_json(paths.MANIFEST))
    publish_table("collect", [{"key": k, "value": str(v)} for k, v in result.items()], "What collect fetched")
    return result
