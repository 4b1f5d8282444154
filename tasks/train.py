"""train: fit the model family of params.yaml on data/processed with Lightning; export safetensors.

Outputs in artifacts/train/: checkpoints/ (last + best; a killed run resumes from last), model/
(model.safetensors + model.json, what later stages load), samples/ (grids or texts every N epochs),
live/ (dvclive metrics: `dvc plots show`), metrics.json.
"""

from __future__ import annotations

from prefect import task

from tasks.dvc_stage import publish_table, repro
from tasks.params import Params
from tasks.storage import read_json


def run(params: Params) -> dict:
    from tasks.trainer import fit

    return fit(params.require("model"), params.require("train"))


@task(name="train")
def train_task() -> dict:
    """Run the DVC stage `train` (resumes a killed run) and show its metrics in the Prefect UI."""
    from tasks.trainer import METRICS

    repro("train")
    metrics = read_json(METRICS)
    publish_table("train", [{"metric": k, "value": str(v)} for k, v in metrics.items()], "Training result")
    return metrics
