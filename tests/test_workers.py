"""Workers anywhere: a Prefect server on PostgreSQL with API auth, and two workers, each in a folder of its
own with no checkout, as two machines of a team would run them. Their flow runs clone the deployed
commit and pull the site's DVC remote (SeaweedFS); a worker killed mid-stage leaves a run that the
server marks Crashed by its missing heartbeat, and the run again on the other worker finishes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import psutil
import pytest

from tests.conftest import BIN, SMALL_MODEL, SMALL_TRAIN, SMALL_TUNE, copy_project, free_port
from tests.postgres_server import new_database, postgres
from tests.s3_server import seaweedfs

pytestmark = pytest.mark.slow

AUTH = "genloop:worker-test-secret"


def _runs(api: str, ids: list[str]) -> list:
    from uuid import UUID

    from prefect.client.orchestration import PrefectClient

    async def read() -> list:
        async with PrefectClient(api=api, auth_string=AUTH) as client:
            return [await client.read_flow_run(UUID(i)) for i in ids]

    return asyncio.run(read())


def _run(api: str, deployment: str = "data/data") -> str:
    """A run of a deployment, as the UI's "Run" makes it; returns its id."""
    from prefect.client.orchestration import PrefectClient

    async def create() -> str:
        async with PrefectClient(api=api, auth_string=AUTH) as client:
            found = await client.read_deployment_by_name(deployment)
            return str((await client.create_flow_run_from_deployment(found.id)).id)

    return asyncio.run(create())


def _of_deployment(api: str, name: str) -> list:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def read() -> list:
        async with PrefectClient(api=api, auth_string=AUTH) as client:
            found = await client.read_deployment_by_name(name)
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id]))
            )

    return asyncio.run(read())


def _trials(url: str) -> list:
    import optuna

    storage = optuna.storages.RDBStorage(url)
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()


def _settled(api: str, ids: list[str], timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        runs = _runs(api, ids)
        if all(r.state and r.state.is_final() for r in runs):
            return runs
        assert time.monotonic() < deadline, [(r.name, r.state_type) for r in runs]
        time.sleep(1)


def test_workers_without_a_checkout_share_runs_and_a_dead_workers_run_is_crashed_and_rerun(
    prepared_digits, tmp_path
):
    import boto3

    with seaweedfs(tmp_path / "seaweedfs") as s3_env, postgres() as pg:
        keys = {k.lower(): s3_env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1", **keys)
        s3.create_bucket(Bucket="team")
        project = copy_project(prepared_digits, tmp_path / "project")
        project.env.update(s3_env)
        study = new_database(pg).replace("postgresql://", "postgresql+psycopg://")
        project.set_params(
            site={"remote": "s3://team/workers"},
            model=SMALL_MODEL,
            train=SMALL_TRAIN,
            tune=SMALL_TUNE
            | {"storage": study, "workers": 2, "n_trials": 3, "max_steps": 20, "pruner": "none"},
        )
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@genloop.invalid"]
        subprocess.run([*git, "commit", "-qam", "the team's site"], cwd=project.root, check=True)
        project.run("genloop", "site", "migrate", check=True)  # the prepared data stages, for every checkout

        # a server others could reach is never open: refused without the auth string, nothing started
        refused = project.run("genloop", "up", "--host", "0.0.0.0", "--port", str(free_port()))
        assert refused.returncode == 1 and "PREFECT_SERVER_API_AUTH_STRING" in refused.stderr
        assert not (project.root / ".genloop/server.pid").exists()

        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        server_env = {
            "PREFECT_SERVER_API_AUTH_STRING": AUTH,
            "PREFECT_API_DATABASE_CONNECTION_URL": new_database(pg).replace(
                "postgresql://", "postgresql+asyncpg://"
            ),
        }
        client_env = {"PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": AUTH,
                      "PREFECT_HOME": str(tmp_path / "client-prefect")}  # fmt: skip
        workers: dict[str, subprocess.Popen] = {}
        try:
            up = project.run("genloop", "up", "--port", str(port), "--no-worker", env=server_env, check=True)
            assert "workers elsewhere (genloop worker) run commit" in up.stdout
            with pytest.raises(urllib.error.HTTPError) as denied:
                urllib.request.urlopen(
                    urllib.request.Request(f"{api}/flow_runs/filter", data=b"{}", method="POST")
                )
            assert denied.value.code == 401

            env = {k: v for k, v in os.environ.items() if k != "GENLOOP_PROJECT"}
            env |= s3_env | client_env | {"PREFECT_WORKER_QUERY_SECONDS": "1"}

            def start(name: str) -> None:  # in a folder of its own, with no checkout
                log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115  (the worker's, until it ends)
                workers[name] = subprocess.Popen(
                    [str(BIN / "genloop"), "worker", "--folder", str(tmp_path / name), "--name", name],
                    cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip

            start("w1")
            start("w2")
            # kill -9 of a worker, with its flow run and stage, while the stage runs
            victim_run = _run(api)
            deadline, victim = time.monotonic() + 180, None
            while victim is None:
                assert time.monotonic() < deadline, "no worker reached the collect stage"
                victim = next((n for n, proc in workers.items() if _in_stage(proc, "collect")), None)
                time.sleep(0.2)
            for proc in psutil.Process(workers[victim].pid).children(recursive=True):
                proc.kill()
            os.killpg(workers[victim].pid, signal.SIGKILL)
            workers[victim].wait()
            rerun = _run(api)  # on the other worker, the only one left
            while _runs(api, [rerun])[0].state_type.value == "SCHEDULED":
                assert time.monotonic() < deadline, "the other worker never took the rerun"
                time.sleep(0.5)
            start(victim)  # the machine back: its checkout is reused
            # four runs: the rerun, two more, and a tune run that starts a run of tune-worker for the
            # other worker of the pool and is a worker on the study itself
            ids = [rerun, _run(api), _run(api), _run(api, "tune/tune")]
            runs = _settled(api, ids, 400)
            assert [r.state_type.value for r in runs] == ["COMPLETED"] * 4, [r.state.message for r in runs]
            helpers = _settled(api, [str(r.id) for r in _of_deployment(api, "tune-worker/tune-worker")], 120)
            assert len(helpers) == 1 and helpers[0].parameters["study"], helpers
            assert helpers[0].state_type.value in ("COMPLETED", "CANCELLED"), helpers[0].state  # cancelled:
            # no worker was free before the tune run's own worker had spent the budget
            trials = _trials(study)
            assert [t.state.name for t in trials].count("COMPLETE") == 3 and len(trials) == 3
            logs = {n: (tmp_path / f"{n}.log").read_text() for n in workers}
            assert all(any(i in log for i in ids) for log in logs.values()), "one worker ran every run"
            # what the site's remote held was pulled, not made again (only collect reruns, by design)
            assert "Stage 'validate' didn't change" in logs["w1"] + logs["w2"]
            assert "Running stage 'validate'" not in logs["w1"] + logs["w2"]
            (crashed,) = _settled(api, [victim_run], 180)  # its heartbeat stopped: the automation said so
            assert crashed.state_type.value == "CRASHED", crashed.state
        finally:
            for proc in workers.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            for proc in workers.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            project.run("genloop", "down")


def _in_stage(proc: subprocess.Popen, stage: str) -> bool:
    """Whether a stage runs under this worker (DVC calls `genloop stage <name>`)."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
        return any(f"stage {stage}" in " ".join(c.cmdline()) for c in tree)
    except psutil.Error:
        return False
