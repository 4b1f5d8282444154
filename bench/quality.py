"""Each family beside its baselines and the real-data floor, in one run: docs/benchmarks.md quotes it.

For every family (or those named with --families), the embedded data of its kind (sklearn:digits for
images, pydoc:topics for text) goes through the data stages' own functions into a scratch folder, the
family trains with params.yaml's settings (--set KEY=VALUE changes one), and evaluate's own measuring
reports the model, the baseline fitted as the evaluate stage fits it, and real held-out data. A last
column says whether the family meets its target.

    python bench/quality.py                          # vae, gan, gpt
    python bench/quality.py --families vae --set model.vae.prior_components=0
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


def prepare(kind: str, folder: Path, params) -> Path:
    """data/processed of the embedded source of `kind`, made by the data stages' functions."""
    from tasks import augment, collect, validate

    project = folder / kind
    if (project / "data/processed/meta.json").is_file():
        return project
    project.mkdir(parents=True, exist_ok=True)
    here = Path.cwd()
    os.chdir(project)
    try:
        p = params.model_copy(
            update={"data": params.data.model_copy(update={"source": SOURCES[kind]}), "model": None}
        )
        collect.run(p)
        validate.run(p)
        augment.run(p)
    finally:
        os.chdir(here)
    return project


def main() -> None:
    import yaml

    sys.path.insert(0, str(ROOT / "bench"))
    from train_overhead import revised

    import models
    from tasks.core.params import load
    from tasks.quality.measure import Measure, load_split
    from tasks.training.fit import fit

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--families", default="vae,gan,gpt")
    ap.add_argument("--out", default=str(ROOT / "bench/.out/quality"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a parameter")
    a = ap.parse_args()
    base = load(a.params)
    changes = {k: yaml.safe_load(v) for k, v in (item.partition("=")[::2] for item in a.set)}
    out = Path(a.out)
    rows = []
    for name in a.families.split(","):
        family = models.family(name)
        p = revised(base, {"model.family": name} | changes)
        project = prepare(family.kind, out, p)
        processed = project / "data/processed"
        start = time.perf_counter()
        trained = fit(
            p.model,
            p.train,
            processed=processed,
            out=out / f"train-{name}",
            live_metrics=False,
            progress=False,
        )
        seconds = time.perf_counter() - start
        from models import export

        model = export.load(out / f"train-{name}" / "model")
        measure = Measure(
            load_split(processed), p.evaluate, project / "featurizer", cache=project / "baseline"
        )
        figures, _ = measure.model(model)
        baseline, _ = measure.baseline(family.baseline)
        floor = measure.floor()
        rows.append((name, figures, baseline, floor, seconds, trained))
        shown = {k: v for k, v in baseline.items() if k != "tried"}
        record = {"family": name, "model": figures, "baseline": shown, "floor": floor}
        print(
            json.dumps(record | {"train_seconds": round(seconds, 1), "steps": trained["steps"]}), flush=True
        )

    print(f"\n{'family':6} {'metric':18} {'model':>9} {'baseline':>9} {'real data':>9}")
    for name, figures, baseline, floor, seconds, trained in rows:
        family = models.family(name)
        for metric in dict.fromkeys((family.headline, *family.sample_metrics)):  # the GAN's headline is FD
            cells = [figures.get(metric), baseline.get(metric), floor.get(metric)]
            print(
                f"{name:6} {metric:18} "
                + " ".join(f"{v:9.4g}" if v is not None else f"{'—':>9}" for v in cells)
            )
        verdict = "meets" if meets(name, figures, baseline, floor) else "misses"
        print(
            f"{name:6} {'':18} {seconds:8.0f}s of training, {trained['steps']} steps; {verdict} its target:"
        )
        print(f"{'':6} {TARGETS[name]}")
        print(f"{'':6} baseline: {baseline['model']}")


if __name__ == "__main__":
    main()
