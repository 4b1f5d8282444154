"""What `genloop flow <name>` prints when the flow ends: a few lines a person reads (`--json` gives the
whole result). Every address comes from the params or from the running service."""

from __future__ import annotations

from typing import Any


def _look() -> list[tuple[str, str]]:
    """Where to look after a lifecycle run, in the order a newcomer would (the service's lines are
    added with its true address)."""
    from tasks.core import paths

    return [(str(path), why) for path, why in (
        (paths.MANIFEST, "what was collected (sha256, size, source, label)"),
        (paths.VALIDATION_SUMMARY, "the validation gate's verdict"),
        (paths.DATA_DOCS / "index.html", "Great Expectations data docs"),
        (paths.PROCESSED / "preview.png", "a few training examples of every class"),
        (paths.ARTIFACTS / "train/samples/final.png", "samples of the trained model"),
        (paths.TRAIN_METRICS, "training result ('dvc metrics show', 'dvc plots show')"),
        (paths.ARTIFACTS / "evaluate/card.html", "the model card: metrics beside baseline and champion"),
        (paths.ARTIFACTS / "evaluate/decision.json", "the promotion gate's verdict, with every check"),
        (paths.ARTIFACTS / "lifecycle/summary.json", "what this run ran, skipped, took and served"),
    )]  # fmt: skip


def lines(flow: str, result: Any, params: Any) -> list[str]:
    """The flow's result, told briefly."""
    if flow == "lifecycle":
        return lifecycle(result, params)
    if flow == "monitor":
        return monitor(result)
    if flow == "deploy" and isinstance(result, dict) and result.get("url"):
        return [f"served {result['bento']} at {result['url']}"]
    return brief(result)


def lifecycle(summary: dict, params: Any) -> list[str]:
    from tasks.lifecycle import table

    reasons = "; ".join(summary["reasons"])
    out = ["", "What each stage did:", *table(summary), ""]
    decided = f"decision: {summary['decision']} for {summary['challenger']}"
    out.append(decided + (f" ({reasons})" if reasons else ""))
    url = summary.get("url")
    out.append(f"served: {summary['deployed']} at {url}" if url else "served: nothing")
    if "ran" in summary["stages"].values():
        out.append("dvc.lock changed: `git add dvc.lock` and commit to record this run")
    out += ["", "Look at:"]
    from tasks.core import paths

    look = _look()
    if params.tune.enabled:  # beside the training's own figures
        look.insert(6, (str(paths.TUNED.parent / "report.html"), "the Optuna study"))
    if url:
        look += [(f"{url}/ui", "the service's page: generate samples, rate them")]
        if params.serve.docs:
            look += [(f"{url}/", "BentoML's API docs (POST /generate, /feedback)")]
        look += [("genloop flow monitor", "the drift monitor, once the service has served")]
        look += [("genloop undeploy", "stop the service")]
    else:
        look += [("genloop deploy", f"serve the champion (port {params.serve.port}, serve.port)")]
    look += [
        ("genloop status", "what is deployed, the registered versions, the champion's card"),
        ("genloop flow retrain", "the loop by hand (with triggers and schedules: make up, then the UI)"),
        ("dvc repro", "run the stages again: nothing to do until the data or params change"),
    ]
    width = max(len(what) for what, _ in look)
    return out + [f"  {what:<{width}}  {why}" for what, why in look]


def monitor(decision: dict) -> list[str]:
    window = decision.get("window") or {}
    verdict = decision.get("verdict")
    drifted = ", ".join(decision.get("drifted_checks") or [])
    out = [f"drift monitor: {verdict}" + (f" ({drifted})" if drifted else "")]
    if window:
        from tasks.monitoring.report import window as told

        out.append(f"window: {told(window)}")
    if decision.get("folder"):
        out.append(f"report: {decision['folder']}/report.html")
    return out


def brief(result: Any, indent: str = "") -> list[str]:
    """Scalars as `key: value`, nested dicts one level deep, long lists counted."""
    if not isinstance(result, dict):
        return [] if result is None else [f"{indent}{result}"]
    out = []
    for key, value in result.items():
        if isinstance(value, dict) and not indent:
            out += [f"{key}:", *brief(value, "  ")]
        elif isinstance(value, dict | list) and len(value) > 6:
            out.append(f"{indent}{key}: {len(value)} items")
        else:
            out.append(f"{indent}{key}: {value}")
    return out
