"""evaluate: measure the trained model on the held-out test split, beside baselines and the champion;
register it; decide whether it becomes the champion; write its model card.

Outputs in artifacts/evaluate/: metrics.json (DVC metrics: `dvc metrics diff`), decision.json (promote,
reject or keep, with every check), pictures/ (samples.png or samples.txt with a fixed seed;
interpolation.png for the VAE), card.md and card.html (the model card), featurizer/ (the image
metrics' classifier, reused while the training data stays the same).

The champion is measured again on this run's split, so challenger and champion are compared on the
same data by the same featurizer, never against figures from an older split. The measuring is in
tasks/quality/ (measure.py, gate.py), the registry in tasks/registry/.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.core import paths
from tasks.core.datasets import layout
from tasks.core.errors import GenloopError
from tasks.core.orchestration import publish_markdown, repro
from tasks.core.params import EvaluateParams, Params
from tasks.core.storage import read_json, sha256_file, write_json

OUT = paths.ARTIFACTS / "evaluate"
METRICS, DECISION = OUT / "metrics.json", OUT / "decision.json"
FEATURIZER, PICTURES = OUT / "featurizer", OUT / "pictures"
MODEL = paths.EXPORT


def load_champion(tag: str | None, split) -> tuple[object | None, str]:
    """The champion model, if it can be measured on this split (same data layout)."""
    from models import export
    from tasks.registry import store

    if tag is None:
        return None, "no champion yet"
    folder = store.folder(tag)
    if export.describe(folder)["data"] != layout(split.meta):
        return None, f"champion {tag} was trained on data of another layout (shape, classes or vocabulary)"
    return export.load(folder), ""


def draw(model, out: Path, ev: EvaluateParams) -> list[Path]:
    """Fixed-seed samples (and latent interpolations where the family has them): same weights, same
    pictures."""
    import models
    from tasks.core.pictures import columns, save_grid

    out.mkdir(parents=True, exist_ok=True)
    kinds = models.family(model.family).pictures
    if "text" in kinds:
        texts = model.sample(8, seed=ev.seed, length=ev.text.length)
        path = out / "samples.txt"
        path.write_text("\n\n----\n\n".join(texts) + "\n")
        return [path]
    cols = columns(model)
    made = [save_grid(model.sample(cols * 8, seed=ev.seed).cpu().numpy(), out / "samples.png", cols=cols)]
    if "interpolation" in kinds:
        grid = model.interpolate(steps=10, rows=cols, seed=ev.seed).cpu().numpy()
        made.append(save_grid(grid, out / "interpolation.png", cols=10))
    return made


def run(params: Params) -> dict:
    import models
    from models import export
    from tasks.quality.gate import decide
    from tasks.quality.measure import Measure, load_split
    from tasks.quality.metrics import UNITS
    from tasks.registry import card, champions, lineage, store

    ev = params.require("evaluate")
    if not (MODEL / export.WEIGHTS).is_file():
        raise GenloopError(f"{MODEL} holds no exported model: run the train stage first (dvc repro train)")
    if not (MODEL / paths.TRAINING_RECORD).is_file():
        raise GenloopError(
            f"{MODEL} has no {paths.TRAINING_RECORD} (exported by an older genloop): "
            "train again (dvc repro train)"
        )
    model = export.load(MODEL)
    family = models.family(model.family)
    split = load_split()
    if family.kind != split.kind:
        raise GenloopError(
            f"the trained {model.family} model does not fit the {split.kind} data in data/processed"
        )

    OUT.mkdir(parents=True, exist_ok=True)
    measure = Measure(split, ev, FEATURIZER)
    challenger, _ = measure.model(model)
    baseline, floor = measure.baseline(family.baseline), measure.floor()

    name = store.name_of(model.family)
    weights = sha256_file(MODEL / export.WEIGHTS)
    tag = f"{name}:{weights[:16]}"  # the version is the weights' hash: same weights, same version
    made = draw(model, PICTURES, ev)
    trail = lineage.record(read_json(MODEL / paths.TRAINING_RECORD))
    labels = {"family": model.family, "source": str(trail["source"]), "git": str(trail["git"]["commit"])[:12]}
    for _ in range(3):  # a flow that promotes meanwhile changes the champion: judge against the new one
        champion_tag = champions.champion(name)
        champion_model, champion_note = load_champion(champion_tag, split)
        champion = measure.model(champion_model)[0] if champion_model is not None else None
        decision = decide(
            model.family,
            challenger,
            baseline,
            floor,
            champion,
            ev.gate,
            same_as_champion=champion_tag == tag,
            rolled_back=champions.rolled_back(tag),
        )
        decision |= {"challenger": tag, "champion": champion_tag, "champion_note": champion_note}
        figures = {
            "family": model.family,
            "version": tag,
            "model": challenger,
            "baseline": baseline,
            "champion": champion,
            "floor": floor,
            "units": {k: v for k, v in UNITS.items() if k in challenger},
            "copy_quantile": ev.copy_quantile,
        }
        if split.kind == "image":
            figures["featurizer"] = {k: v for k, v in measure.featurizer.items() if k != "fingerprint"}
        card_files = card.write(OUT, figures, decision, trail, made)
        metadata = {
            "lineage": trail,
            "metrics": challenger,
            "baseline": baseline,
            "decision": decision["decision"],
        }
        extra = {p.relative_to(OUT).as_posix(): p for p in [*made, *card_files]}
        store.register(MODEL, model.family, tag.split(":")[1], metadata, labels, extra)  # kept as first saved
        if decision["decision"] != "promote":
            break
        if champions.promote(tag, "; ".join(decision["reasons"]), over=champion_tag):
            break
    else:
        raise GenloopError(f"the champion of {name} kept changing while {tag} was evaluated: evaluate again")

    write_json(METRICS, {k: v for k, v in figures.items() if k != "units"} | {"units": figures["units"]})
    write_json(DECISION, decision)
    return {"version": tag, "decision": decision["decision"], "reasons": decision["reasons"], **challenger}


@task(name="evaluate")
def evaluate_task() -> dict:
    """Run the DVC stage `evaluate` and publish the model card in the Prefect UI."""
    repro("evaluate")
    decision = read_json(DECISION)
    publish_markdown("model-card", (OUT / "card.md").read_text(), f"Model card of {decision['challenger']}")
    return decision
