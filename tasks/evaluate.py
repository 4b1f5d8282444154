"""evaluate: measure the trained model on the held-out test split, beside baselines and the champion;
register it; decide whether it becomes the champion; write its model card.

Outputs in artifacts/evaluate/: metrics.json (DVC metrics: `dvc metrics diff`), decision.json (promote,
reject or keep, with every check), pictures/ (samples.png or samples.txt with a fixed seed;
interpolation.png for the VAE), card.md and card.html (the model card), featurizer/ (the image
metrics' classifier, reused while the training data stays the same), reference/ (the drift monitor's
reference, registered with the version: tasks/monitoring/reference.py).

The champion is measured again on this run's split, so challenger and champion are compared on the
same data by the same featurizer, never against figures from an older split. The measuring is in
tasks/quality/ (measure.py, gate.py), the registry in tasks/registry/.
"""

from __future__ import annotations

from pathlib import Path

from tasks.core import paths
from tasks.core.datasets import layout
from tasks.core.errors import GenloopError
from tasks.core.orchestration import publish_markdown, repro, task
from tasks.core.params import EvaluateParams, Params
from tasks.core.storage import read_json, sha256_file, write_json

OUT = paths.ARTIFACTS / "evaluate"
METRICS, DECISION = OUT / "metrics.json", OUT / "decision.json"
FEATURIZER, BASELINE, PICTURES = OUT / "featurizer", OUT / "baseline", OUT / "pictures"
REFERENCE = OUT / "reference"  # the drift monitor's, registered with the version
MODEL = paths.EXPORT
OWN_LINE = "give it a line of its own with model.name (auto names a line after its data source and family)"


def load_champion(
    tag: str | None, split, line: str, family: str, challenger: str
) -> tuple[object | None, str]:
    """The champion model of the line. A line is one family on one dataset layout: a model of another
    family or layout (shape, classes or vocabulary) never replaces its champion, it belongs to a line
    of its own. A champion with the challenger's version has its weights: read from the challenger's
    export, so a damaged registry copy of it is registered again rather than read."""
    from models import export
    from tasks.registry import store

    if tag is None:
        return None, "no champion yet"
    folder = MODEL if tag == challenger else store.folder(tag)
    described = export.describe(folder)
    if described["family"] != family:
        raise GenloopError(
            f"model line {line} holds {described['family']} models (its champion {tag}); this model is a "
            f"{family}: {OWN_LINE}"
        )
    theirs, ours = described["data"], layout(split.meta)
    if theirs != ours:
        raise GenloopError(
            f"model line {line} holds models of {summary(theirs)} (its champion {tag}); this model was "
            f"trained on {summary(ours)}: {OWN_LINE}"
        )
    return export.load(folder), ""


def summary(data: dict) -> str:
    """A data layout in a few words: '8x8 grey images of classes 0, 1, ...' or 'text of 97 characters'."""
    if data["kind"] == "text":
        return f"text of {len(data['vocab'])} characters"
    c, h, w = data["shape"]
    names = ", ".join(str(n) for n in data.get("classes") or []) or "no classes"
    return f"{h}x{w} images with {c} channel(s), classes {names}"


def draw(model, out: Path, ev: EvaluateParams, split, samples, baseline_samples) -> list[Path]:
    """The pictures of a version, fixed seeds (same weights, same pictures): its samples, a class to a
    column; real test data, its samples and the baseline's side by side; and the latent interpolations
    where the family has them, a class to a row."""
    import models
    from tasks.core.pictures import column_names, columns, save_grid

    out.mkdir(parents=True, exist_ok=True)
    kinds = models.family(model.family).pictures
    if "text" in kinds:
        texts = model.sample(8, seed=ev.seed, length=ev.text.length)
        path = out / "samples.txt"
        path.write_text("\n\n----\n\n".join(texts) + "\n")
        return [path, compare_texts(split, samples, baseline_samples, ev.text.length, out / "compare.txt")]
    cols, names = columns(model), column_names(model)
    made = [save_grid(model.sample(cols * 8, seed=ev.seed).cpu().numpy(), out / "samples.png", cols, names)]
    made.append(compare_images(split, samples, baseline_samples, cols, names, out / "compare.png"))
    if "interpolation" in kinds:
        grid = model.interpolate(steps=10, rows=cols, seed=ev.seed).cpu().numpy()
        made.append(save_grid(grid, out / "interpolation.png", 10, None, names))
    return made


def compare_images(split, samples, baseline_samples, cols: int, names: list[str] | None, path: Path) -> Path:
    """Real test images, the model's samples (drawn for the test images' classes) and the baseline's,
    four rows each; with classes, four of each class, a class to a column."""
    import numpy as np

    from tasks.core.pictures import save_side_by_side

    x, y = split.arrays["test"]
    if names:
        picks = []
        for c in range(cols):
            found = np.flatnonzero(y == c)
            picks.append(np.resize(found, 4) if len(found) else np.full(4, -1))  # -1: no test image of it
        index = np.stack(picks, axis=1).reshape(-1)  # row r holds the r-th pick of every class
    else:
        index = np.arange(min(len(x), 4 * cols))

    def take(images: np.ndarray) -> np.ndarray:
        chosen = np.asarray(images, dtype=np.float32)[np.maximum(index, 0)]
        chosen[index < 0] = 0
        return chosen

    blocks = {
        "real (test)": take(x / 255.0),
        "this model": take(samples),
        "baseline (any class)": baseline_samples[: len(index)],
    }
    return save_side_by_side(blocks, path, cols, names)


def compare_texts(split, samples: list[str], baseline_samples: list[str], length: int, path: Path) -> Path:
    """Three excerpts of the real test text, three of the model's texts and three of the baseline's."""
    real = split.text["test"]
    excerpts = [real[i : i + length] for i in range(0, max(1, len(real) - length), max(1, len(real) // 3))][
        :3
    ]
    sections = {
        "real text (test split)": excerpts,
        "this model": samples[:3],
        "baseline": baseline_samples[:3],
    }
    path.write_text(
        "".join(
            f"== {name} ==\n\n" + "\n\n----\n\n".join(t.strip() for t in texts) + "\n\n"
            for name, texts in sections.items()
        )
    )
    return path


def run(params: Params) -> dict:
    import models
    from models import export
    from tasks.monitoring import reference
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
    measure = Measure(split, ev, FEATURIZER, cache=BASELINE)
    challenger, samples = measure.model(model)
    (baseline, baseline_samples), floor = measure.baseline(family.baseline), measure.floor()

    trained = read_json(MODEL / paths.TRAINING_RECORD)
    if "line" not in trained:
        raise GenloopError(f"{MODEL} was trained before model lines existed: train it again")
    line = trained["line"]  # the line the model was trained for (model.name at training time)
    name = store.name_of(line)
    weights = sha256_file(MODEL / export.WEIGHTS)
    tag = f"{name}:{weights[:16]}"  # the version is the weights' hash: same weights, same version
    made = draw(model, PICTURES, ev, split, samples, baseline_samples)
    # the drift monitor's reference, registered with the version (tasks/monitoring/reference.py)
    featurizer_dir = FEATURIZER if split.kind == "image" else None
    kept = reference.build(split, model, samples, featurizer_dir, ev.text.length, REFERENCE)
    trail = lineage.record(trained)
    labels = {"family": model.family, "line": line, "source": str(trail["source"])}
    labels["git"] = str(trail["git"]["commit"])[:12]
    for _ in range(3):  # a flow that promotes meanwhile changes the champion: judge against the new one
        champion_tag = champions.champion(name)
        champion_model, champion_note = load_champion(champion_tag, split, line, model.family, tag)
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
        extra = {p.relative_to(OUT).as_posix(): p for p in [*made, *card_files, *reference.files(kept)]}
        store.register(MODEL, line, tag.split(":")[1], metadata, labels, extra)  # kept as first saved
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
