"""tune: an Optuna study of short training runs on data/processed, whose best values train can use.

Each trial is a run of the same `fit` as train (tasks/training/), with the sampled values over params.yaml
and a budget of tune.max_steps, pruned when its validation loss lags (tasks/tuning/). Outputs in
artifacts/tune/: best_params.yaml, trials.json, summary.json, report.html, and study/ (the journal and
the trials' folders, kept so that a killed run continues the same study). With tune.enabled false it
runs no trials. The pieces live in tasks/tuning/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tasks.core.errors import GenloopError
from tasks.core.orchestration import publish_markdown, publish_table, repro, task
from tasks.core.params import Params


def run(params: Params) -> dict:
    """The DVC stage: tune.workers worker processes (or this one) on the study, then its outputs."""
    from tasks.tuning import report, study

    tune = params.require("tune")
    if not tune.enabled:
        return report.write_disabled()
    import models

    name = study.study_name(params)
    prepare(params, name)
    if tune.workers == 1:
        study.work(params, name, progress=True)
    else:
        workers(params, tune.workers, name)
    unit = models.family(params.require("model").family).heldout_unit
    return report.write(study.open_study(params, name=name), unit, study.shown(tune.storage))


def prepare(params: Params, name: str | None = None) -> str:
    """Create the study (and PostgreSQL's tables) once, before workers start side by side, and queue
    its first trial; returns its name."""
    from tasks.tuning import study

    name = name or study.study_name(params)
    study.seed_first_trial(study.open_study(params, name=name), params)
    return name


def workers(params: Params, count: int, name: str) -> None:
    """Run `count` worker processes on the study and wait for them (a failed one fails the stage). This
    process only waits meanwhile, so it leaves the plan for the cores to them (models/cores.py)."""
    from models import cores

    cores.release()
    with params_file(params) as path:
        procs = [subprocess.Popen(worker_command(path, name), env=worker_env(count, i)) for i in range(count)]
        codes = [p.wait() for p in procs]
    if any(codes):
        raise GenloopError(f"tune workers exited with {codes}: see their output above")


def worker_env(count: int, index: int) -> dict[str, str]:
    """The GPUs shared out between the workers, one each in turn (a setting already in the environment
    is kept). The CPU cores are shared by the plan each worker joins (models/cores.py)."""
    env = dict(os.environ)
    gpus = visible_gpus()
    if gpus and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def visible_gpus() -> list[str]:
    """The CUDA devices' indices, from nvidia-smi (without starting CUDA in this process)."""
    import shutil

    if not shutil.which("nvidia-smi"):
        return []
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return [str(i) for i, line in enumerate(proc.stdout.splitlines()) if line.startswith("GPU ")]


def worker_command(params_path: str | Path, name: str | None = None) -> list[str]:
    study = ["--study", name] if name else []
    return [sys.executable, "-m", "genloop.cli", "tune", "worker", "--params", str(params_path), *study]


class params_file:
    """These params as a temporary YAML file, for worker processes to load exactly the same."""

    def __init__(self, params: Params) -> None:
        self.text = yaml.safe_dump(params.model_dump(by_alias=True), sort_keys=False)

    def __enter__(self) -> str:
        fd, self.path = tempfile.mkstemp(prefix="genloop-tune-", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            f.write(self.text)
        return self.path

    def __exit__(self, *exc) -> None:
        os.unlink(self.path)


WORKER_DEPLOYMENT = "tune-worker/tune-worker"  # prefect.yaml: one worker on a study, on any machine


@task(name="tune-study")
def tune_study_task() -> dict:
    """Create or load the study of params.yaml, for the workers to share: {enabled, workers, study,
    shared} (shared: in PostgreSQL, so workers on other machines can join)."""
    from tasks.core.params import load

    params = load()
    tune = params.require("tune")
    if not tune.enabled:
        return {"enabled": False, "workers": 0, "study": None, "shared": False}
    return {
        "enabled": True,
        "workers": tune.workers,
        "study": prepare(params),
        "shared": tune.storage != "journal",
    }


@task(name="tune-worker")
def tune_worker_task(index: int, count: int, name: str) -> int:
    """One worker process on the study; returns its exit code (0: the budget is reached)."""
    from tasks.core.orchestration import stream

    return stream(worker_command("params.yaml", name), f"worker {index}", env=worker_env(count, index))


@task(name="tune-workers: start")
def start_workers_task(count: int, name: str) -> list[str] | None:
    """`count` runs of the tune-worker deployment on the study, for any worker of the pool on any machine
    to take; returns their ids. None when this flow run has no server with that deployment (`genloop
    flow tune` on its own): the workers then run here."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def exists() -> bool:
        async with get_client() as client:
            try:
                await client.read_deployment_by_name(WORKER_DEPLOYMENT)
                return True
            except ObjectNotFound:
                return False

    if not run_coro_as_sync(exists()):
        return None
    # timeout=0: started, not waited for (settle_workers_task does)
    return [
        str(run_deployment(WORKER_DEPLOYMENT, parameters={"study": name}, timeout=0).id) for _ in range(count)
    ]


@task(name="tune-workers: settle")
def settle_workers_task(ids: list[str], poll_s: float = 2.0) -> list[str]:
    """Once this run's own worker is done (the budget is spent): cancel the runs no worker took yet,
    wait for the others, and return their final states."""
    import time
    from uuid import UUID

    from prefect import get_client
    from prefect.states import Cancelled
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def settle() -> list | None:
        async with get_client() as client:
            states = [(await client.read_flow_run(UUID(i))).state for i in ids]
            for i, state in zip(ids, states, strict=True):
                if state and state.type.value in ("SCHEDULED", "PENDING"):
                    await client.set_flow_run_state(
                        UUID(i), Cancelled(message="the study's budget was spent")
                    )
            return [s.type.value for s in states] if all(s and s.is_final() for s in states) else None

    while (states := run_coro_as_sync(settle())) is None:
        time.sleep(poll_s)
    return states


@task(name="tune: join")
def join_task(name: str | None) -> None:
    """Run trials of the study in this checkout until it has had tune.n_trials."""
    from tasks.core.errors import GenloopError
    from tasks.core.orchestration import stream

    if stream(worker_command("params.yaml", name)) != 0:
        raise GenloopError("the tune worker failed: see its output above")


@task(name="tune")
def tune_task() -> dict:
    """Run the DVC stage `tune` (trials left in the budget, then the outputs) and show the trials."""
    from tasks.core.space import read_tuned
    from tasks.core.storage import read_json
    from tasks.tuning import report

    repro("tune")
    summary = read_json(report.SUMMARY)
    if summary.get("enabled"):
        rows = [
            {k: str(r[k]) for k in ("number", "state", "value", "epochs", "params", "reason")}
            for r in read_json(report.TRIALS)
        ]
        publish_table("tune-trials", rows, f"Trials of study {summary['study']}")
        best = read_tuned()
        lines = [f"- `{k}`: {v}" for k, v in best.get("params", {}).items()]
        publish_markdown(
            "tune-best",
            f"**Best {summary['unit']}: {summary['best_value']:.5g}** (trial {summary['best_trial']} of "
            f"study `{summary['study']}`)\n\n" + "\n".join(lines),
            "Best trial",
        )
    return summary
