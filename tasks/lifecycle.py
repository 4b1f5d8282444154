"""The lifecycle flow's summary: which stages ran and which DVC found unchanged, the metrics, the gate's
decision and what is served. A stage ran when its entry in dvc.lock changed during the flow.
Writes artifacts/lifecycle/summary.json and a Prefect artifact.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tasks.core import paths
from tasks.core.orchestration import publish_markdown, task
from tasks.core.storage import parse_yaml, read_json, write_json

STAGES = ("feedback", "collect", "validate", "augment", "tune", "train", "evaluate", "package")
LOCK = Path("dvc.lock")
OUT = paths.ARTIFACTS / "lifecycle"
SUMMARY = OUT / "summary.json"


def lock_entries() -> dict[str, str]:
    """A fingerprint of each stage's record in dvc.lock (what it ran on and made)."""
    if not LOCK.is_file():
        return {}
    stages = (parse_yaml(LOCK.read_text()) or {}).get("stages", {})
    return {
        name: hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
        for name, entry in stages.items()
    }


# The flow's bookkeeping tasks, by the name a reader knows them by; any other task is a stage.
TASKS = {"site: pull": "pull", "site: push": "push", "deploy (unless already served)": "deploy"}


def summary(
    before: dict[str, str], decision: dict, deployed: dict | None, started: float, took: dict[str, float],
    tune_enabled: bool = True,
) -> dict:  # fmt: skip
    after = lock_entries()
    stages = {s: "ran" if before.get(s) != after.get(s) else "unchanged" for s in STAGES if s in after}
    if "tune" in stages and not tune_enabled:
        stages["tune"] = "off"  # its stage writes that it was off: nothing was tuned
    names = [*STAGES, *TASKS.values()]
    times = {TASKS.get(name, name): round(s, 1) for name, s in took.items() if TASKS.get(name, name) in names}
    metrics_file = paths.ARTIFACTS / "evaluate" / "metrics.json"
    metrics = read_json(metrics_file).get("model", {}) if metrics_file.is_file() else {}
    return {
        "stages": stages,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
        "decision": decision.get("decision"),
        "reasons": decision.get("reasons", []),
        "challenger": decision.get("challenger"),
        "deployed": (deployed or {}).get("bento"),
        "deploy": (deployed or {}).get("action"),
        "url": (deployed or {}).get("url"),
        "times": dict(sorted(times.items(), key=lambda kv: names.index(kv[0]))),
        "seconds": round(time.time() - started, 1),
    }


def table(s: dict) -> list[str]:
    """What each stage did and took, one line each, then the total (what `genloop flow lifecycle` prints)."""
    times = s.get("times", {})
    rows = [("pull", "")] if times.get("pull", 0) >= 0.1 else []  # with a site: what it took to fetch
    rows += list(s["stages"].items()) + [("push", "")] * (times.get("push", 0) >= 0.1)
    if s.get("deploy"):
        rows.append(("deploy", s["deploy"]))
    lines = [f"  {name:<9} {what:<15} {_took(times.get(name))}" for name, what in rows]
    return [*lines, f"  {'total':<25} {_took(s['seconds'])}"]


def _took(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:6.1f} s" if seconds < 120 else f"{seconds / 60:6.1f} min"


def markdown(s: dict) -> str:
    times = s.get("times", {})
    rows = "\n".join(
        f"| {stage} | {what} | {_took(times.get(stage))} |" for stage, what in s["stages"].items()
    )
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in s["metrics"].items())
    return (
        f"### Lifecycle ({s['seconds']} s)\n\n| stage | | time |\n|---|---|---|\n{rows}\n\n"
        f"- metrics: {metrics or 'none'}\n- decision: {s['decision']} for {s['challenger']} "
        f"({'; '.join(s['reasons'])})\n- served: {s['deployed']} ({s['deploy']}) at {s['url']}\n"
    )


@task(name="lifecycle: dvc.lock before")
def before_task() -> dict:
    from tasks.core.orchestration import prefetch_status

    prefetch_status()  # DVC's view of what is up to date, ready when the first stage's task asks
    return {"entries": lock_entries(), "started": time.time()}


@task(name="lifecycle: summary")
def summary_task(before: dict, decision: dict, deployed: dict | None) -> dict:
    from tasks.core.orchestration import seconds
    from tasks.core.params import load

    took = seconds()
    result = summary(before["entries"], decision, deployed, before["started"], took, load().tune.enabled)
    write_json(SUMMARY, result)
    publish_markdown("lifecycle", markdown(result), "What the lifecycle flow ran, skipped and served")
    print(f"decision: {result['decision']}; served: {result['deployed']} ({result['deploy']})")
    return result
