"""train: fit the model family of params.yaml on data/processed with Lightning; export safetensors.

Outputs in artifacts/train/: checkpoints/ (last + best; a killed run resumes from last), model/
(model.safetensors + model.json, what later stages load, and training.json, what it was trained with),
samples/ (grids or texts every N epochs), live/ (dvclive metrics: `dvc plots show`), metrics.json.
The training itself lives in tasks/training/.
"""

from __future__ import annotations

from tasks.core import paths
from tasks.core.errors import GenloopError
from tasks.core.orchestration import publish_table, repro, task
from tasks.core.params import Params
from tasks.core.storage import read_json


def run(params: Params) -> dict:
    from tasks.core.params import family_train
    from tasks.training.fit import fit

    tuned = None
    if params.require("train").use_tuned:
        params, tuned = apply_tuned(params)
    tuned_keys = {k.removeprefix("train.") for k in (tuned or {}).get("values", {})}
    own = {k: v for k, v in family_train(params).items() if k not in tuned_keys}
    if own:  # the train section's value of these keys is not the one used: say so
        family = params.require("model").family
        print(f"model.{family}.train sets " + ", ".join(f"{k} {v}" for k, v in own.items()), flush=True)
    return fit(params.require("model"), params.require("train"), tuned=tuned)


def apply_tuned(params: Params) -> tuple[Params, dict]:
    """params.yaml with the tune stage's best values over it, and the record of which came from where."""
    from tasks.core.params import with_values
    from tasks.core.paths import TUNED
    from tasks.core.space import active, read_tuned

    best = read_tuned()
    if not best.get("params"):
        raise GenloopError(
            f"train.use_tuned is true but {TUNED} holds no tuned values: set tune.enabled: true and run "
            "the tune stage (dvc repro tune), or set train.use_tuned: false"
        )
    family = params.require("model").family
    values = active(best["params"], family)  # a study of another family tuned nothing of this one
    tuned = {k: best[k] for k in ("study", "trial", "value", "unit") if k in best} | {"values": values}
    return with_values(params, values, str(TUNED)), tuned


@task(name="train")
def train_task() -> dict:
    """Run the DVC stage `train` (resumes a killed run) and show its metrics in the Prefect UI."""
    repro("train")  # the task imports nothing of training: a cached stage costs what DVC's check does
    metrics = read_json(paths.TRAIN_METRICS)
    publish_table("train", [{"metric": k, "value": str(v)} for k, v in metrics.items()], "Training result")
    return metrics
