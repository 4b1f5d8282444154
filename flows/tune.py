"""The tune flow: bring the data up to date, run tune.workers worker processes on one study (one Prefect
task each), then the DVC stage `tune` writes the study's outputs."""

from prefect import flow

from flows.data import data
from tasks.share import push_task
from tasks.tune import tune_study_task, tune_task, tune_worker_task


@flow(name="tune", log_prints=True)
def tune(force_collect: bool = False) -> dict:
    """data flow, then the study's workers side by side, then `dvc repro tune` (best_params.yaml, report)."""
    data(force_collect=force_collect)
    plan = tune_study_task()
    runs = [tune_worker_task.submit(i, plan["workers"], plan["study"]) for i in range(plan["workers"])]
    codes = [r.result() for r in runs]
    if any(codes):
        raise RuntimeError(f"tune workers exited with {codes}: see their logs")
    result = tune_task()
    push_task()
    return result


FLOW = tune
