"""What a monitor run shows: the chart of each check's score over time, the run's page and its summary.

Scores are each check's largest feature score divided by its threshold, so one scale fits every check:
1 or more is drift. The page (report.html) is self-contained: the chart is inline, and Evidently's
report of every check is one page beside it (evidently.html), with Evidently's scripts and fonts inline.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from pathlib import Path

STATUS_COLOURS = {"drift": "#c62828", "ok": "#2e7d32"}
EVIDENTLY_LINK = (
    '<p><a href="evidently.html">Evidently report of every check</a>: each feature\'s distributions</p>'
)


def chart(history: list[dict], path: Path) -> Path:
    """Each check's score (share of its threshold) per run, from history.jsonl, as a PNG."""
    import matplotlib.pyplot as plt

    fig = figure(history)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def figure(history: list[dict]) -> Figure:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    times = [datetime.fromisoformat(h["at"]) for h in history]
    names = list(dict.fromkeys(k for h in history for k in h.get("scores", {})))
    for name in names:
        points = [(t, h["scores"].get(name)) for t, h in zip(times, history, strict=True)]
        points = [(t, v) for t, v in points if v is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
    ax.axhline(1.0, color="#c62828", linestyle="--", linewidth=1, label="threshold")
    ax.set_ylabel("score / threshold")
    ax.set_title("drift scores per monitor run (1 or more: drift)")
    ax.set_ylim(bottom=0)
    if times and max(times) - min(times) < timedelta(hours=1):  # one run (or a few minutes): an hour
        middle = min(times) + (max(times) - min(times)) / 2  # wide, not matplotlib's four years
        ax.set_xlim(middle - timedelta(minutes=30), middle + timedelta(minutes=30))
    ax.legend(fontsize=7, loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _rows(decision: dict) -> list[tuple[str, str, str, str, str]]:
    out = []
    for name, c in decision["checks"].items():
        sizes = c.get("sizes") or {}
        size = f"{sizes.get('current', '—')} vs {sizes.get('reference', '—')}" if sizes else "—"
        score = "—" if c["score"] is None else f"{c['score']:.2f}"
        detail = ", ".join(c["drifted"]) or c.get("note") or ""
        status = c["status"] + (" (information)" if c.get("informational") else "")
        out.append((name, status, score, size, detail))
    return out


def page(decision: dict, evidently: bool, path: Path) -> Path:
    """report.html: the verdict, a row per check, each feature's score, the chart of scores over time,
    and a link to Evidently's report of the checks (evidently.html)."""
    e = html.escape
    rows = []
    for name, status, score, size, detail in _rows(decision):
        link = e(name)
        colour = STATUS_COLOURS.get(status.split(" ")[0], "#555")
        rows.append(
            f'<tr><td>{link}</td><td style="color:{colour}">{e(status)}</td><td>{score}</td>'
            f"<td>{e(size)}</td><td>{e(detail)}</td></tr>"
        )
    features = []
    for name, c in decision["checks"].items():
        for f in c["features"]:
            mark = "drift" if f["drifted"] else ""
            features.append(
                f"<tr><td>{e(name)}</td><td>{e(str(f['feature']))}</td><td>{e(f['method'])}</td>"
                f"<td>{f['score']:.4g}</td><td>{f['threshold']:.4g}</td><td>{mark}</td></tr>"
            )
    chart_png = path.parent / "scores.png"
    image = f'<img alt="scores over time" src="{_data_uri(chart_png)}">' if chart_png.is_file() else ""
    verdict = decision["verdict"]
    path.write_text(
        f"""<!doctype html><html><head><meta charset="utf-8"><title>drift monitor: {e(verdict)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}</style></head><body>
<h1>Drift monitor: <span style="color:{STATUS_COLOURS.get(verdict, "#555")}">{e(verdict)}</span></h1>
<p>Model version <code>{e(decision["version"])}</code>, run at {e(decision["at"])}; window:
{e(window(decision["window"]))}.</p>
<h2>Checks</h2><table><tr><th>check</th><th>status</th><th>score / threshold</th>
<th>samples (current vs reference)</th><th>drifted features or note</th></tr>{"".join(rows)}</table>
{EVIDENTLY_LINK if evidently else ""}
<h2>Scores over time</h2>{image}
<h2>Features</h2><table><tr><th>check</th><th>feature</th><th>method</th><th>score</th>
<th>threshold</th><th></th></tr>{"".join(features)}</table></body></html>
"""
    )
    return path


def window(w: dict) -> str:
    """The window in words: how many samples, served over which hours, how much of it is recent."""
    if not w.get("first"):
        return f"{w['samples']} served samples since {w['since']}"
    span = (
        f"{w['first'][11:16]} to {w['last'][11:16]} UTC"
        if w["first"][:10] == w["last"][:10]
        else (f"{w['first'][:16]} to {w['last'][:16]} UTC")
    )
    recent = f"{w['last_hour_share']:.0%} of them in its last hour"
    told = f"{w['samples']} served samples, {span} ({w['hours']:g} h; {recent})"
    half = w.get("newest_half")
    if half:  # judged again on its newest half: is the drift still going on?
        still = ", ".join(half["drifted"])
        told += f"; its newest half (from {half['first'][11:16]} UTC) "
        told += f"still drifts in {still}" if still else "does not drift: the drifted part is older"
    return told


def _cell(text: str) -> str:
    """A Markdown table cell: one line, its pipes escaped (a note may hold an error's text)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown(decision: dict, chart_path: Path) -> str:
    """The Prefect artifact: verdict, a row per check, the chart inline."""
    lines = [
        f"## Drift monitor: **{decision['verdict']}**",
        f"`{decision['version']}`, window: {window(decision['window'])}. "
        f"Report: `{decision['folder']}/report.html`",
        "",
        "| check | status | score / threshold | samples | drifted or note |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(_cell(c) for c in row)} |" for row in _rows(decision)]
    if chart_path.is_file():
        lines += ["", f"![scores over time]({_data_uri(chart_path)})"]
    return "\n".join(lines)
