"""What a study leaves in artifacts/tune/: best_params.yaml (what train.use_tuned applies), trials.json
(every trial), summary.json (DVC metrics) and report.html (Optuna's plots, with plotly's script inside
the page, so it opens with no network)."""

from __future__ import annotations

import html
import math
from typing import Any

import yaml

from tasks.core import paths
from tasks.core.storage import write_json
from tasks.tuning.study import TUNE, retry_of

BEST = paths.TUNED
TRIALS = TUNE / "trials.json"
SUMMARY = TUNE / "summary.json"
REPORT = TUNE / "report.html"


def trial_rows(study) -> list[dict[str, Any]]:
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    retries = {n: t.number for t in trials if (n := retry_of(t)) is not None}
    retries_of = {run: failed for failed, run in retries.items()}
    rows = []
    for t in trials:
        value = t.value if t.value is not None and math.isfinite(t.value) else None
        if t.state.name == "PRUNED" and t.intermediate_values:  # its last reported validation loss
            value = t.intermediate_values[max(t.intermediate_values)]
        reason = t.user_attrs.get("reason")
        if reason is None and t.number in retries:  # failed by PostgreSQL's heartbeat
            reason = f"its worker died (run again as trial {retries[t.number]})"
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "params": t.params,
                "value": value,
                "epochs": t.user_attrs.get("epochs"),
                "device_seconds": t.user_attrs.get("device_seconds"),
                "reason": reason,
                "source": f"retry of trial {retries_of[t.number]}"
                if t.number in retries_of
                else t.user_attrs.get("source", "sampled"),
                "resumed": t.user_attrs.get("resumed", False),
                "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
            }
        )
    return rows


def write(study, unit: str, storage: str) -> dict:
    """Write the four outputs of an enabled study; returns the summary. A study with no completed trial
    has no best values: its trials and report are written, then the stage fails saying so."""
    from tasks.core.errors import GenloopError

    rows = trial_rows(study)
    complete = [r for r in rows if r["state"] == "complete"]
    best = min(complete, key=lambda r: r["value"]) if complete else None
    states = ("complete", "pruned", "fail", "running", "waiting")
    counts = {s: sum(r["state"] == s for r in rows) for s in states}
    summary = {
        "enabled": True,
        "study": study.study_name,
        "storage": storage,
        "best_value": best["value"] if best else None,
        "best_trial": best["number"] if best else None,
        "unit": unit,
        "trials": counts,
        "epochs": sum(r["epochs"] or 0 for r in rows),
        "device_seconds": round(sum(r["device_seconds"] or 0 for r in rows), 2),
    }
    TUNE.mkdir(parents=True, exist_ok=True)
    write_json(TRIALS, rows)
    write_json(SUMMARY, summary)
    REPORT.write_text(page(study, rows, summary))
    if best is None:
        BEST.write_text(best_yaml(None))
        raise GenloopError(f"no trial of study {study.study_name} completed: see {TRIALS} for why")
    BEST.write_text(best_yaml({"study": study.study_name, "trial": best["number"], "value": best["value"],
                               "unit": unit, "params": best["params"]}))  # fmt: skip
    return summary


def write_disabled() -> dict:
    """tune.enabled is false: empty outputs, written in no time (train's dependency stays the same)."""
    summary = {"enabled": False}
    write_json(TRIALS, [])
    write_json(SUMMARY, summary)
    BEST.write_text(best_yaml(None))
    REPORT.write_text(_html("Tuning", "<p>Tuning is off (<code>tune.enabled: false</code>).</p>"))
    return summary


def best_yaml(best: dict | None) -> str:
    head = "# the tune stage's best trial: `train.use_tuned: true` trains with these params\n"
    body = best or {"study": None, "params": {}}
    return head + yaml.safe_dump(body, sort_keys=False)


def page(study, rows: list[dict], summary: dict) -> str:
    """Optimisation history, parameter importances and parallel coordinates, and the trials table."""
    import optuna.visualization as vis

    figures, notes = [], []
    for title, draw in (
        ("Optimisation history", lambda: vis.plot_optimization_history(study)),
        ("Parameter importances", lambda: vis.plot_param_importances(study, evaluator=_fanova())),
        ("Parallel coordinates", lambda: vis.plot_parallel_coordinate(study)),
        ("Intermediate values (pruning)", lambda: vis.plot_intermediate_values(study)),
    ):
        try:
            figures.append((title, draw()))
        except Exception as err:  # e.g. importances need two completed trials
            notes.append(f"<h2>{title}</h2><p>not drawn: {html.escape(str(err).splitlines()[0])}</p>")
    parts = []
    for i, (title, fig) in enumerate(figures):
        fig.update_layout(title=title)
        # plotly's script once, inside the page: no CDN, no file beside it to lose
        parts.append(fig.to_html(full_html=False, include_plotlyjs=i == 0))
    best = summary["best_value"]
    head = (
        f"<p>Study <code>{html.escape(study.study_name)}</code> ({html.escape(summary['storage'])}): "
        f"{len(rows)} trials, {summary['trials']['complete']} complete, {summary['trials']['pruned']} "
        f"pruned, {summary['trials']['fail']} failed; {summary['epochs']} epochs. Best "
        f"{summary['unit']}: {best if best is None else f'{best:.5g}'} (trial {summary['best_trial']}).</p>"
    )
    return _html(f"Tuning: {study.study_name}", head + "".join(parts) + "".join(notes) + _table(rows))


def _fanova():
    from optuna.importance import FanovaImportanceEvaluator

    return FanovaImportanceEvaluator(seed=0)  # the same study gives the same importances


def _table(rows: list[dict]) -> str:
    cols = ("number", "state", "value", "epochs", "device_seconds", "source", "params", "reason")
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<h2>Trials</h2><table><tr>{head}</tr>{body}</table>"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.5g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_cell(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def _html(title: str, body: str) -> str:
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )
