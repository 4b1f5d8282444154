"""train: fit the model family of params.yaml on data/processed with Lightning; export safetensors.

Outputs in artifacts/train/: checkpoints/ (last + best; a killed run resumes from last), model/
(model.safetensors + model.json, what later stages load, and training.json, what it was trained with),
samples/ (grids or texts every N epochs), live/ (dvclive metrics: `dvc plots show`), metrics.json.
The training itself lives in tasks/training/.
"""

from __future__ import annotations

from prefect import task

from tasks.core.orchestration import publish_table, repro
from tasks.core.params import Params
from tasks.core.storage import read_json


def run(params: Params) -> dict:
    from tasks.training.fit import fit

    return fit(params.require("model"), params.require("train"))


@task(name="train")
def train_task() -> dict:
    """Run the DVC stage `train` (resumes a killed run) and show its metrics in the Prefect UI."""
    from tasks.training.fit import METRICS

    repro("train")
    metrics = read_json(METRICS)
    publish_table("train", [{"metric": k, "value": str(v)} for k, v in metrics.items()], "Training result")
    return metrics
