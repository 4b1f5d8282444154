"""The tune flow: bring the data up to date, run tune.workers workers on one study, then the DVC stage
`tune` writes the study's outputs. With the study in PostgreSQL and the flow run by a server that has
the tune-worker deployment, this run is one worker and the others are runs of that deployment, on
whichever worker of the pool (any machine) takes them; otherwise they are processes here, one Prefect
task each."""

from prefect import flow

from flows.data import data
from tasks.share import pull_task, push_task
from tasks.tune import (
    join_task,
    settle_workers_task,
    start_workers_task,
    tune_study_task,
    tune_task,
    tune_worker_task,
)


@flow(name="tune", log_prints=True)
def tune(force_collect: bool = False) -> dict:
    """data flow, then the study's workers side by side, then `dvc repro tune` (best_params.yaml, report)."""
    data(force_collect=force_collect)
    plan = tune_study_task()
    others = start_workers_task(plan["workers"] - 1, plan["study"]) if plan["shared"] else None
    if others is not None:
        try:
            join_task(plan["study"])  # the study ends even when no other worker of the pool is free
        finally:  # the runs no worker took yet are cancelled, the others waited for
            states = ["COMPLETED", *settle_workers_task(others)]
    else:
        runs = [tune_worker_task.submit(i, plan["workers"], plan["study"]) for i in range(plan["workers"])]
        states = ["COMPLETED" if r.result() == 0 else "FAILED" for r in runs]
    # a worker that crashed (its machine died) is fine: its trial was failed by heartbeat and run again,
    # and the study is the record of what ran
    if any(s not in ("COMPLETED", "CANCELLED", "CRASHED") for s in states):
        raise RuntimeError(f"tune workers ended {states}: see their logs")
    result = tune_task()
    push_task()
    return result


@flow(name="tune-worker", log_prints=True)
def tune_worker(study: str | None = None) -> None:
    """One worker on a study in PostgreSQL (tune.storage): trials until it has had tune.n_trials. Run on
    any machine of the pool, in its own checkout, after the site's data is pulled."""
    pull_task()
    join_task(study)


FLOW = tune
