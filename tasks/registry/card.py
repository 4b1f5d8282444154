"""The model card of a version (Mitchell et al. 2019): what it is, what it was trained on, how it measures
against the baseline and the champion, what it memorised, and what it is (not) for. Markdown for
people and Prefect, a self-contained HTML page (pictures inlined) for a browser.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

import models


def _num(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def markdown(figures: dict, decision: dict, lineage: dict, pictures: list[Path]) -> str:
    family, tag = models.family(figures["family"]), figures["version"]
    model, baseline, champion, floor = (figures[k] for k in ("model", "baseline", "champion", "floor"))
    champion = champion or {}
    lines = [
        f"# Model card: {tag}",
        "",
        f"**Decision: {decision['decision']}** — " + "; ".join(decision["reasons"]),
        "",
        "## Metrics (held-out test split)",
        "",
        f"| metric | this model | baseline | champion ({decision.get('champion') or 'none'}) | real data "
        "| unit |",
        "|---|---|---|---|---|---|",
    ]
    degenerate = set(baseline.get("degenerate", []))
    for metric, unit in figures["units"].items():
        base = _num(baseline.get(metric)) + (" (degenerate)" if metric in degenerate else "")
        lines.append(
            f"| {metric} | {_num(model.get(metric))} | {base} "
            f"| {_num(champion.get(metric))} | {_num(floor.get(metric))} | {unit} |"
        )
    lines += [
        "",
        f"Baseline: {baseline.get('model')}. Real data: the validation split measured like samples "
        "(the best a sample metric can be on this data).",
    ]
    if "per_pixel_bits_per_dim" in baseline:
        lines.append(
            "Every pixel an independent Gaussian scores "
            f"{_num(baseline['per_pixel_bits_per_dim'])} bits/dim: a mixture worse than that is degenerate."
        )
    if decision.get("champion_note"):
        lines.append(f"Champion: {decision['champion_note']}.")
    lines += [
        "",
        "## Gate",
        "",
        "| check | passed | this model | baseline | champion | real data | detail |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in decision["checks"]:
        figures_of = " | ".join(_num(c.get(k)) for k in ("model", "baseline", "champion", "floor"))
        lines.append(f"| {c['check']} | {'yes' if c['passed'] else 'NO'} | {figures_of} | {c['detail']} |")
    mem = model.get("memorised")
    lines += [
        "",
        "## Memorisation",
        "",
        f"{_num(mem)} of the samples count as copies of training data "
        + (
            f"(closer to a training image than the closest {figures.get('copy_quantile', 0.1):.0%} of real "
            "test images are)."
            if family.kind == "image"
            else "(they repeat a verbatim span of the training text)."
        ),
        "",
        "## Data lineage",
        "",
        f"- source: `{lineage.get('source')}`",
        f"- manifest sha256: `{lineage.get('manifest_sha256')}`",
        f"- validation: {'passed' if lineage['validation'].get('success') else 'not passed'} "
        f"({lineage['validation'].get('files')} files)",
        f"- git commit: `{lineage['git'].get('commit')}`"
        + (" (uncommitted changes)" if lineage["git"].get("dirty") else ""),
    ]
    lines += [f"- dvc.lock `{path}`: `{md5}`" for path, md5 in sorted(lineage.get("dvc", {}).items())]
    if "featurizer" in figures:
        f = figures["featurizer"]
        lines.append(f"- featurizer: {f.get('kind')}, test accuracy {_num(f.get('test_accuracy'))}")
    lines += _feedback(lineage)
    lines += [
        "",
        "## Parameters",
        "",
        "```yaml",
        _yaml(lineage["params"]).rstrip(),
        "```",
        "",
        *_auto(lineage.get("auto")),
        *_tuned(lineage.get("tuned")),
        "## Samples",
        "",
    ]
    for p in pictures:
        rel = f"{p.parent.name}/{p.name}"  # pictures/ beside the card, here and in the registry
        lines.append(f"![{p.stem}]({rel})" if p.suffix == ".png" else f"`{rel}`:")
        if p.suffix == ".txt":
            lines += ["", "```text", p.read_text()[:1500].rstrip(), "```"]
    lines += [
        "",
        "## Intended use",
        "",
        family.intended_use,
        "",
        "## Limitations",
        "",
        family.limitations,
        "",
    ]
    return "\n".join(lines)


def _feedback(lineage: dict) -> list[str]:
    """What people's ratings of served samples did: those trained on, those never trained on."""
    fed, low = lineage.get("feedback"), lineage.get("low_rated") or {"count": 0, "first": []}
    if not fed and not low["count"]:
        return []
    lines = ["", "## Feedback", ""]
    if fed:
        lines.append(
            f"- trained on {fed['added']} served samples rated highly, drawn again from their seeds "
            f"({fed['share']:.1%} of the collected data; at most {fed['max_synthetic_share']:.0%}); "
            f"{fed['left_out']} more left out by that bound"
        )
    lines.append(f"- rated low, never trained on: {low['count']}")
    if low["first"]:
        lines += ["", "| sample | model | rating | comment |", "|---|---|---|---|"]
        for r in low["first"]:
            comment = escape(str(r.get("comment") or "")[:120]).replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['sample_id']} | {r['model']} | {r['rating']} | {comment} |")
    return lines


def _auto(auto: dict | None) -> list[str]:
    """What params.yaml left to `auto` and what the data made of it (the values above)."""
    if not auto:
        return []
    lines = ["Chosen for this data (`auto` in params.yaml):", ""]
    return lines + [f"- `{k}`: {_num(v) if not isinstance(v, list) else v}" for k, v in auto.items()] + [""]


def _tuned(tuned: dict | None) -> list[str]:
    """Which of the parameters above came from the tune stage (train.use_tuned), and from which trial."""
    if not tuned:
        return ["Every parameter is from params.yaml (no tuned values: train.use_tuned is false).", ""]
    value = tuned.get("value")
    lines = [
        f"From tuning (study `{tuned.get('study')}`, trial {tuned.get('trial')}, validation "
        f"{tuned.get('unit', 'loss')} {_num(value)} in its short run):",
        "",
    ]
    return lines + [f"- `{k}`: {_num(v)}" for k, v in tuned["values"].items()] + [""]


def _yaml(obj: dict) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def html(md: str, folder: Path) -> str:
    """The Markdown as one HTML page; PNGs inlined so the file stands alone."""
    import markdown as md_lib

    body = md_lib.markdown(md, extensions=["tables", "fenced_code"])
    for png in folder.rglob("*.png"):
        data = base64.b64encode(png.read_bytes()).decode()
        body = body.replace(
            f'src="{png.relative_to(folder).as_posix()}"', f'src="data:image/png;base64,{data}"'
        )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem}"
        "img{image-rendering:pixelated;max-width:100%}pre{background:#f4f4f4;padding:.5rem;overflow:auto}"
    )
    head = f'<meta charset="utf-8"><title>Model card</title><style>{style}</style>'
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>\n"


def write(folder: Path, figures: dict, decision: dict, lineage: dict, pictures: list[Path]) -> list[Path]:
    md = markdown(figures, decision, lineage, pictures)
    (folder / "card.md").write_text(md)
    (folder / "card.html").write_text(html(md, folder))
    return [folder / "card.md", folder / "card.html"]
