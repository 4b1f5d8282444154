"""drift-monitor: one window of what the service served, against the champion's reference.

A flow, not a DVC stage: it reads the world (serving.db of each replica, the latest collected batch in
data/raw) as it is now. Its checks (tasks/monitoring/checks.py) tell the world moving from the model
changing:
- input: the latest collected batch against the champion's training data;
- request: the labels or prompts asked for against the training distribution;
- output: the served samples' features against the champion's own samples at evaluate, in the same
  class mix (the verdict), and, for information, against real data (a model is never exactly its
  data: not an alarm);
- ratings: the window's mean rating and share of low ratings against the window before.
Each run writes artifacts/monitor/<run time>/ (report.html with each check's Evidently report beside
it, decision.json), appends to history.jsonl, redraws scores.png from it, and on drift emits the
Prefect event genloop.drift.detected (resource: the model version), for a retrain trigger to listen to.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime

import numpy as np

from tasks.core import paths
from tasks.core.errors import GenloopError
from tasks.core.orchestration import publish_markdown, task
from tasks.core.params import Params
from tasks.core.storage import read_json, write_json

OUT = paths.ARTIFACTS / "monitor"
HISTORY = OUT / "history.jsonl"
CHART = OUT / "scores.png"
EVENT = "genloop.drift.detected"
INFORMATIONAL = ("output_vs_real",)  # reported, never the verdict
CHECKS = ("input", "request", "output", "output_vs_real", "ratings")


def _side(kind: str, names: tuple[str, ...], stats: np.ndarray, embedding: np.ndarray) -> dict:
    """One side of a comparison, as checks.compare takes it. Text is compared as distributions summed
    over the side (lengths differ by request); images by per-sample statistics and the embedding."""
    from tasks.monitoring.checks import text_counts

    n = len(stats)
    if kind == "text":
        return {"n": n, "counts": text_counts(stats, embedding, names) if n else {}}
    return {
        "n": n,
        "stats": {s: stats[:, i] for i, s in enumerate(names)} if n else {},
        "embedding": embedding,
    }


def _labels(shares: dict[str, float], n: int = 10_000) -> dict:
    return {"labels": {k: v * n for k, v in shares.items()}}


def champion_since(name: str, tag: str) -> float | None:
    """When `tag` last became its line's champion (promoted, or restored by a rollback): samples served
    before that were judged against the reference of the version then champion."""
    from tasks.registry import champions

    history = champions.record().get(name, {}).get("history", [])
    times = [h["at"] for h in history if h.get("tag") == tag and h.get("event") != "rollback undone"]
    return datetime.fromisoformat(times[-1]).timestamp() if times else None


def _like(reference: tuple[np.ndarray, np.ndarray], classes: np.ndarray, served: list[str | None]):
    """The reference samples in the served class mix (images), so that the output check compares like
    with like: the classes asked for are the request check's business."""
    stats, embedding = reference
    wanted = [c for c in served if c is not None]
    if not len(classes) or not wanted:
        return stats, embedding
    rng = np.random.default_rng(0)
    picks = []
    for label in set(wanted):
        pool = np.flatnonzero(classes == label)
        if len(pool):
            share = wanted.count(label) / len(wanted)
            picks.append(rng.choice(pool, max(1, round(share * len(classes)))))
    if not picks:
        return stats, embedding
    idx = np.concatenate(picks)
    return stats[idx], embedding[idx]


def latest_batch(
    kind: str, featurizer, length: int, shape: list | None
) -> tuple[np.ndarray, np.ndarray] | str:
    """The features of the batch in data/raw (the latest collected), or why there are none."""
    from models.features import features
    from tasks.core.pictures import read_pixels
    from tasks.monitoring.reference import snippets

    if not paths.MANIFEST.is_file():
        return "no collected batch in data/raw (run collect)"
    manifest = read_json(paths.MANIFEST)
    if manifest["kind"] != kind:
        return f"the latest batch holds {manifest['kind']}, the champion models {kind}"
    if kind == "image":
        arrays = [read_pixels(paths.RAW / f["path"]) for f in manifest["files"]]
        shaped = [a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in arrays]
        if len({a.shape for a in shaped}) != 1:
            return "the latest batch's images differ in size"
        x = np.stack(shaped).astype(np.float32) / 255.0
        if shape is not None and list(x.shape[1:]) != list(shape):
            return f"the latest batch's images ({list(x.shape[1:])}) do not fit the champion's ({shape})"
        try:
            return features("image", x, featurizer)
        except RuntimeError as err:  # another layout than the featurizer's: that is drift in itself
            return f"the latest batch's images ({x.shape[1:]}) do not fit the champion's featurizer: {err}"
    text = "\n".join((paths.RAW / f["path"]).read_text("utf-8") for f in manifest["files"])
    return features("text", snippets(text, 2000, length, seed=3))


def run(params: Params, now: float | None = None) -> dict:
    """Judge the current window; write its outputs; return the decision."""
    from models.features import FEATURIZER_INFO, ImageFeaturizer
    from tasks.core.params import line
    from tasks.monitoring import checks, logs
    from tasks.monitoring.reference import Reference
    from tasks.registry import champions, store
    from tasks.serving.process import SERVING

    mp = params.require("monitor")
    name = store.name_of(line(params))
    tag = champions.champion(name)
    if tag is None:
        raise GenloopError(f"{name} has no champion to monitor yet: run train and evaluate first")
    try:
        ref = Reference(store.folder(tag) / "reference")
    except FileNotFoundError:
        raise GenloopError(
            f"{tag} was registered without a drift reference (by an older genloop), and a version's files "
            "are fixed once registered: train a new version (or `genloop rollback` to one that has it)"
        ) from None
    kind, names = ref.kind, tuple(ref.info["stats"])
    now = time.time() if now is None else now
    log = logs.open_logs(mp.logs, SERVING)
    prefix = f"{name}:"  # every version of the line: one that is served but not champion is drift
    start = champion_since(name, tag)
    if mp.window_samples:
        rows = log.samples(prefix, since=start, until=now, last=mp.window_samples)
        since = min((r["at"] for r in rows), default=now)
    else:
        since = max(now - mp.window_hours * 3600, start or 0.0)
        rows = log.samples(prefix, since=since, until=now)
    width = ref.part("samples")[1].shape[1]  # rows of another featurizer's width are left out
    methods = mp.methods.model_dump()
    compare = dict(
        methods=methods, min_samples=mp.min_samples, max_rows=mp.max_rows, embedding_plot=mp.embedding_plot
    )
    results: list[checks.Check] = []

    # (a) input: the latest collected batch against the training data
    eye = None
    if kind == "image":
        exists = (ref.folder / FEATURIZER_INFO).is_file()
        eye = ImageFeaturizer.load(ref.folder) if exists else ImageFeaturizer(None)
    train = _side(kind, names, *ref.part("train"))
    batch = latest_batch(kind, eye, params.require("evaluate").text.length, ref.info.get("shape"))
    if isinstance(batch, str):
        drift = "do not fit" in batch or "holds" in batch
        results.append(checks.Check("input", "drift" if drift else "no data", note=batch))
    else:
        results.append(checks.compare("input", train, _side(kind, names, *batch), **compare))

    def served_checks(rows: list[dict]) -> list:
        """The checks of what was served: (b) what was asked, (c) what came out."""
        found: list[checks.Check] = []
        # (b) request: the labels (images) or prompts (text) asked for
        if kind == "image":
            asked = [r["label"] for r in rows if r["label"] is not None and r["asked"]]
            counts: dict[str, float] = {}
            for label in asked:
                counts[label] = counts.get(label, 0) + 1
            expected = _labels(ref.info["labels"]) if ref.info["labels"] else None
            if expected is None:
                found.append(checks.Check("request", "no reference", note="the training data has no labels"))
            else:
                current = {"n": len(asked), "counts": {"labels": counts}}
                found.append(checks.compare("request", {"n": 10_000, "counts": expected}, current, **compare))
        else:
            first = {}  # one prompt per request, however many samples it asked for
            for r in rows:
                first.setdefault(r["request_id"], r)
            prompts = logs.arrays(list(first.values()), "prompt_stats", "prompt_embedding")
            reference_prompts = _side(kind, names, *ref.part("prompts"))
            asked_here = _side(kind, names, *prompts)
            found.append(checks.compare("request", reference_prompts, asked_here, **compare))

        # (c) output: the served samples against the champion's own, and against real data
        served = _side(kind, names, *logs.arrays(rows, width=width))
        own = ref.part("samples")
        if kind == "image":
            own = _like(own, ref.arrays.get("samples_labels", np.array([])), [r["label"] for r in rows])
        found.append(checks.compare("output", _side(kind, names, *own), served, **compare))
        found.append(checks.compare("output_vs_real", train, served, **compare))

        return found

    results += served_checks(rows)

    # (d) ratings: this window against the one before
    results.append(_ratings(log, prefix, since, now, mp.ratings))

    told = window(since, [r["at"] for r in rows])
    drifted = [c.name for c in results if c.status == "drift" and c.name in ("request", "output")]
    if drifted and len(rows) >= 2 * mp.min_samples:  # is it still drifting, or did it drift earlier?
        newest = sorted(rows, key=lambda r: r["at"])[len(rows) // 2 :]
        again = {c.name: c.status for c in served_checks(newest)}
        told["newest_half"] = {
            "samples": len(newest),
            "first": datetime.fromtimestamp(newest[0]["at"], UTC).isoformat(timespec="seconds"),
            "drifted": [name for name in drifted if again.get(name) == "drift"],
        }
    return _write(tag, results, since, now, told, mp)


def _ratings(log, prefix: str, since: float, until: float, rp) -> object:
    from tasks.monitoring.checks import NOT_ENOUGH, Check, feature

    span = until - since
    now_r = [r for _, r in log.ratings(prefix, since, until)]
    before = [r for _, r in log.ratings(prefix, since - span, since)] if span > 0 else []
    check = Check("ratings", "ok", {"reference": len(before), "current": len(now_r)})
    if len(now_r) < rp.min_ratings or len(before) < rp.min_ratings:
        check.status = NOT_ENOUGH
        check.note = f"{len(now_r)} ratings now, {len(before)} in the window before; {rp.min_ratings} needed"
        return check
    mean_now, mean_before = float(np.mean(now_r)), float(np.mean(before))
    low_now = float(np.mean([r <= rp.low for r in now_r]))
    low_before = float(np.mean([r <= rp.low for r in before]))
    check.features = [
        feature(
            "mean_rating", "drop", mean_before - mean_now, rp.max_mean_drop, values=[mean_before, mean_now]
        ),
        feature(
            "low_share", "rise", low_now - low_before, rp.max_low_share_rise, values=[low_before, low_now]
        ),
    ]
    check.status = "drift" if check.drifted else "ok"
    return check


def window(since: float, times: list[float]) -> dict:
    """What the window holds: from when, how many samples, and when its first and last were served (a
    verdict on 24 hours of traffic says drift for hours after the traffic came back, and this says so)."""

    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")

    told = {"since": stamp(since), "samples": len(times)}
    if times:
        first, last = min(times), max(times)
        told |= {"first": stamp(first), "last": stamp(last), "hours": round((last - first) / 3600, 2)}
        # the share served in the newest hour of it: little, and the verdict is mostly older traffic's
        told["last_hour_share"] = round(sum(t > last - 3600 for t in times) / len(times), 3)
    return told


def _write(tag: str, results: list, since: float, now: float, told: dict, mp) -> dict:
    from tasks.monitoring import checks, report

    when = datetime.fromtimestamp(now, UTC)
    stamp = f"{when:%Y%m%dT%H%M%S}.{when.microsecond // 1000:03d}Z"  # runs in one second stay apart
    folder = OUT / stamp
    folder.mkdir(parents=True, exist_ok=True)
    verdicts = [c for c in results if c.name not in INFORMATIONAL]
    drifted = [c.name for c in verdicts if c.status == "drift"]
    judged = [c for c in verdicts if c.status in ("drift", "ok")]
    decision = {
        "version": tag,
        "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "window": told,
        "drift": bool(drifted),
        "verdict": "drift" if drifted else ("ok" if judged else checks.NOT_ENOUGH),
        "drifted_checks": drifted,
        "checks": {c.name: c.as_dict() | {"informational": c.name in INFORMATIONAL} for c in results},
        "folder": folder.as_posix(),
    }
    evidently = checks.save_html(results, folder / "evidently.html")
    write_json(folder / "decision.json", decision)
    OUT.mkdir(parents=True, exist_ok=True)
    line = {k: decision[k] for k in ("version", "at", "verdict", "drifted_checks")}
    line["scores"] = {c.name: c.score for c in results}
    line["samples"] = told["samples"]
    with HISTORY.open("a") as f:
        f.write(json.dumps(line) + "\n")
    report.chart(history(), CHART)
    shutil.copy2(CHART, folder / "scores.png")
    report.page(decision, evidently, folder / "report.html")
    _prune(mp.keep_reports)
    return decision


def history(limit: int | None = None) -> list[dict]:
    """The monitor's past verdicts, oldest first (the last `limit`)."""
    if not HISTORY.is_file():
        return []
    lines = [json.loads(x) for x in HISTORY.read_text().splitlines() if x.strip()]
    return lines[-limit:] if limit else lines


def _prune(keep: int) -> None:
    """Only the newest `keep` run folders keep their HTML; every one keeps decision.json."""
    runs = sorted(p for p in OUT.iterdir() if p.is_dir())
    for old in runs[:-keep]:
        for page in old.glob("*.html"):
            page.unlink()


def emit(decision: dict) -> None:
    """The Prefect event a retrain trigger listens for, when there is drift."""
    from prefect.events import emit_event

    emit_event(
        event=EVENT,
        resource={
            "prefect.resource.id": f"genloop.model.{decision['version']}",
            "genloop.version": decision["version"],
        },
        payload={
            "verdict": decision["verdict"],
            "drifted_checks": decision["drifted_checks"],
            "scores": {k: v["score"] for k, v in decision["checks"].items()},
            "window": decision["window"],
            "report": f"{decision['folder']}/report.html",
        },
    )


@task(name="monitor")
def monitor_task() -> dict:
    """One window judged; the summary and chart as a Prefect artifact; the drift event when drifted."""
    from models import cores
    from tasks.core.params import load
    from tasks.monitoring import report

    with cores.claimed("monitor"):  # its share of the cores beside training and the service
        decision = run(load())
    publish_markdown("drift", report.markdown(decision, CHART), f"drift monitor: {decision['verdict']}")
    if decision["drift"]:
        emit(decision)
    return decision
