"""Each family beside its baselines and the real-data floor, in one run: docs/benchmarks.md quotes it.

For every family (or those named with --families), the embedded data of its kind (sklearn:digits for
images, pydoc:topics for text) goes through the data stages' own functions into a scratch folder, the
family trains with params.yaml's settings (--set KEY=VALUE changes one), and evaluate's own measuring
reports the model, the baseline fitted as the evaluate stage fits it, and real held-out data. A last
column says whether the family meets its target.

    python bench/quality.py                          # vae, gan, gpt
    python bench/quality.py --families vae --set model.vae.prior_components=0
    python bench/quality.py --folders                # the image families on several folders

`--folders` (digits, shapes, patches, strokes: bench/folders.py makes them) trains every image family
on each folder with nothing but `data.source` changed, and holds the family `model.family: auto`
picks to the image target on every one: FD at most half the mixture's, precision and recall at
least the mixture's, at most 5 minutes of training. A last column says what the gate
(evaluate.gate of the params) decides for each model as a first champion. Each row is printed as a
line of JSON as it is measured; `--rows FILE` prints the table again from those lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCES = {"image": "sklearn:digits", "text": "pydoc:topics"}
# the targets the defaults are held to: a ratio to the baseline's or the floor's figure, or a margin
TARGETS = {
    "vae": "fd <= 0.5 x baseline; precision, recall >= baseline; nll < baseline",
    "gan": "fd <= 2 x real data's",
    "gpt": "bits/char <= baseline - 0.40",
}


def meets(family: str, model: dict, baseline: dict, floor: dict) -> bool:
    if family == "vae":
        return (
            model["fd"] <= 0.5 * baseline["fd"]
            and model["precision"] >= baseline["precision"]
            and model["recall"] >= baseline["recall"]
            and model["nll_bits_per_dim"] < baseline["nll_bits_per_dim"]
        )
    if family == "gan":
        return model["fd"] <= 2 * floor["fd"]
    return model["bits_per_char"] <= baseline["bits_per_char"] - 0.40


def folder_target(model: dict, baseline: dict, seconds: float) -> bool:
    """The image target on a user's folder, for the family `auto` picks."""
    return (
        model["fd"] <= 0.5 * baseline["fd"]
        and model["precision"] >= baseline["precision"]
        and model["recall"] >= baseline["recall"]
        and seconds <= 300
    )


def prepare(name: str, folder: Path, params, source: str | None = None) -> Path:
    """data/processed of `source` (the embedded source of kind `name` when None) in folder/name, made by
    the data stages' functions."""
    from tasks import augment, collect, validate

    project = folder / name
    if (project / "data/processed/meta.json").is_file():
        return project
    project.mkdir(parents=True, exist_ok=True)
    here = Path.cwd()
    os.chdir(project)
    try:
        p = params.model_copy(
            update={"data": params.data.model_copy(update={"source": source or SOURCES[name]}), "model": None}
        )
        collect.run(p)
        validate.run(p)
        augment.run(p)
    finally:
        os.chdir(here)
    return project


def trained_and_measured(name: str, p, project: Path, out: Path) -> dict:
    """Family `name` trained on project's data/processed with params p, and measured as evaluate
    measures it, beside the baseline and real held-out data."""
    import models
    from models import export
    from tasks.quality.measure import Measure, load_split
    from tasks.training.fit import fit

    processed = project / "data/processed"
    start = time.perf_counter()
    trained = fit(p.model, p.train, processed=processed, out=out, live_metrics=False, progress=False)
    seconds = time.perf_counter() - start
    model = export.load(out / "model")
    measure = Measure(load_split(processed), p.evaluate, project / "featurizer", cache=project / "baseline")
    figures, _ = measure.model(model)
    baseline, _ = measure.baseline(models.family(name).baseline)
    return {
        "family": name,
        "model": figures,
        "baseline": {k: v for k, v in baseline.items() if k != "tried"},
        "floor": measure.floor(),
        "train_seconds": round(seconds, 1),
        "steps": trained["steps"],
        "config": model.config,
    }


def main() -> None:
    import yaml

    sys.path.insert(0, str(ROOT / "bench"))
    from train_overhead import revised

    import models
    from tasks.core.params import load

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--families", default=None, help="default: vae,gan,gpt; with --folders vae,gan")
    ap.add_argument("--folders", nargs="?", const="digits,shapes,patches,strokes", default=None,
                    help="image folders to train on (default when given alone: all four)")  # fmt: skip
    ap.add_argument("--rows", default=None, metavar="FILE",
                    help="with --folders: the table from the JSON lines of an earlier run")  # fmt: skip
    ap.add_argument("--out", default=str(ROOT / "bench/.out/quality"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a parameter")
    a = ap.parse_args()
    base = load(a.params)
    changes = {k: yaml.safe_load(v) for k, v in (item.partition("=")[::2] for item in a.set)}
    out = Path(a.out)
    if a.rows and not a.folders:
        ap.error("--rows prints a --folders table again: give --folders too")
    if a.folders:
        folders_table(a, base, changes, out)
        return
    rows = []
    for name in (a.families or "vae,gan,gpt").split(","):
        family = models.family(name)
        p = revised(base, {"model.family": name} | changes)
        project = prepare(family.kind, out, p)
        record = trained_and_measured(name, p, project, out / f"train-{name}")
        rows.append(record)
        print(json.dumps(record), flush=True)

    print(f"\n{'family':6} {'metric':18} {'model':>9} {'baseline':>9} {'real data':>9}")
    for r in rows:
        name, figures, baseline, floor = r["family"], r["model"], r["baseline"], r["floor"]
        family = models.family(name)
        for metric in dict.fromkeys((family.headline, *family.sample_metrics)):  # the GAN's headline is FD
            cells = [figures.get(metric), baseline.get(metric), floor.get(metric)]
            print(
                f"{name:6} {metric:18} "
                + " ".join(f"{v:9.4g}" if v is not None else f"{'—':>9}" for v in cells)
            )
        verdict = "meets" if meets(name, figures, baseline, floor) else "misses"
        print(
            f"{name:6} {'':18} {r['train_seconds']:8.0f}s of training, {r['steps']} steps; "
            f"{verdict} its target:"
        )
        print(f"{'':6} {TARGETS[name]}")
        print(f"{'':6} baseline: {baseline['model']}")


def folders_table(a, base, changes: dict, out: Path) -> None:
    """Every image family on every folder, the mixture and real data beside each, one run."""
    from folders import FOLDERS, make
    from train_overhead import revised

    from tasks.quality.gate import decide

    gate = revised(base, changes).evaluate.gate  # what evaluate would decide with these params

    rows = (
        [json.loads(line) for line in Path(a.rows).read_text().splitlines() if line.startswith("{")]
        if a.rows
        else []
    )
    for folder in a.folders.split(",") if not a.rows else ():
        source = make(folder, out / "folders")
        p0 = revised(base, {"data.source": source} | changes)
        picked = p0.model.family  # what model.family (auto by default, resolved by parse) trains here
        project = prepare(f"folder-{folder}", out, p0, source)
        for name in (a.families or "vae,gan").split(","):
            p = revised(p0, {"model.family": name})
            record = trained_and_measured(name, p, project, out / f"train-{folder}-{name}")
            record |= {"folder": folder, "auto": name == picked}
            rows.append(record)
            print(json.dumps(record), flush=True)

    def cell(figures: dict) -> str:
        return f"{figures['fd']:7.1f} {figures['precision']:5.3f} {figures['recall']:5.2f}"

    print(f"\n{'folder':8} {'family':9} {'model FD   P     R':21} {'mixture FD P     R':21} "
          f"{'real FD    P     R':21} {'training':>16}  {'target':7} gate")  # fmt: skip
    for r in rows:
        name = r["family"] + (" (auto)" if r["auto"] else "")
        verdict = "meets" if folder_target(r["model"], r["baseline"], r["train_seconds"]) else "misses"
        decision = decide(r["family"], r["model"], r["baseline"], r["floor"], None, gate)["decision"]
        print(
            f"{r['folder']:8} {name:9} {cell(r['model']):21} {cell(r['baseline']):21} {cell(r['floor']):21} "
            f"{r['train_seconds']:6.0f} s {r['steps']:5d} st  {verdict:7} {decision}"
        )
    for folder in dict.fromkeys(r["folder"] for r in rows):
        print(f"{folder}: {FOLDERS[folder]}")


if __name__ == "__main__":
    main()
