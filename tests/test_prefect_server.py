"""`genloop up` / `genloop down`: a real Prefect server, a worker, and a deployment run from it."""

from __future__ import annotations

import os
import socket
import time

import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_up_deploys_runs_a_deployment_and_down_stops_everything(digits):
    """The deployments run by a worker, on a project whose digits are prepared (test_flow and
    test_pipeline run collect and validate from scratch): augment, then the retrain. (A run whose worker
    died, and its rerun elsewhere: tests/test_workers.py.)"""
    project = digits  # the data deployment's run has augment to redo
    project.set_params(augment={"seed": 1339})
    port = free_port()
    env = {
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_HOME": str(project.root / ".genloop/prefect"),
    }
    try:
        # a run waiting behind another of a CANCEL_NEW deployment is cancelled when the server marks it
        # late (Prefect's default: 15 s after its start time); a first retrain shorter than that, on a
        # fast machine, ended before the burst's second run was cancelled, which then ran
        late = {"PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": "1",
                "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "1"}  # fmt: skip
        up = project.run("genloop", "up", "--port", str(port), env=late, check=True)
        assert f"http://127.0.0.1:{port}" in up.stdout
        worker = psutil.Process(int((project.root / ".genloop/worker.pid").read_text()))
        assert "--limit 1" in " ".join(worker.cmdline())  # this checkout's flow runs, one at a time
        assert worker.environ()["PREFECT_WORKER_QUERY_SECONDS"] == "2"  # a run starts within 2 s
        listed = project.run("prefect", "deployment", "ls", env=env, check=True).stdout
        assert "data/data" in listed and "train/train" in listed
        run = project.run("prefect", "deployment", "run", "data/data", "--watch", env=env)
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr
        ran = yaml.safe_load((project.root / "dvc.lock").read_text())["stages"]["augment"]
        assert ran["params"]["params.yaml"]["augment"]["seed"] == 1339  # the worker ran augment through DVC
        a_drift_event_retrains_once_and_the_cooldown_skips_the_next(project, env)
    finally:
        project.run("genloop", "undeploy")  # what the retrain deployed
        pids = [int((project.root / f".genloop/{n}.pid").read_text()) for n in ("worker", "server")
                if (project.root / f".genloop/{n}.pid").is_file()]  # fmt: skip
        down = project.run("genloop", "down")
    assert down.returncode == 0 and "stopped: worker, server" in down.stdout
    time.sleep(0.5)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


DRIFT = {
    "version": "genloop-sklearn-digits-vae:0123456789abcdef",
    "verdict": "drift",
    "drifted_checks": ["output"],
    "checks": {"output": {"score": 2.5}, "input": {"score": 0.4}},
    "window": {"samples": 300},
    "folder": "artifacts/monitor/20261130T000000Z",
}
EMIT = (
    "import json, sys; from prefect.events.worker import EventsWorker; from tasks.monitor import emit; "
    "emit(json.loads(sys.argv[1])); EventsWorker.drain_all(timeout=30)"
)


def _retrain_runs(api: str) -> list:
    import asyncio

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def read() -> list:
        async with PrefectClient(api=api) as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])))
            return sorted(runs, key=lambda r: r.created)

    return asyncio.run(read())


def _settled(api: str, count: int, timeout_s: float) -> list:
    """The retrain runs once there are `count` of them and all have finished."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = _retrain_runs(api)
        if len(runs) >= count and all(r.state and r.state.is_final() for r in runs):
            return runs
        assert time.monotonic() < deadline, [(r.name, r.state_type) for r in runs]
        time.sleep(2)


def a_drift_event_retrains_once_and_the_cooldown_skips_the_next(project, env: dict) -> None:
    """The monitor's drift event, sent through the server's API, starts the retrain deployment (its
    reactive trigger); a burst of two gives one run (concurrency_limit 1, CANCEL_NEW). The worker runs
    it to the end (deployed, or rejected by the gate with its reasons). A second event inside the
    cooldown gives a run skipped with its reason."""
    import json

    from tests.conftest import free_port
    from tests.test_evaluate import LENIENT, SMALL_VAE
    from tests.test_train import QUICK

    project.set_params(
        model=SMALL_VAE, train=QUICK, evaluate=LENIENT, serve={"port": free_port(), "ready_timeout_s": 90},
        retrain={"cooldown_hours": 24, "min_new_files": 0},
    )  # fmt: skip
    api = env["PREFECT_API_URL"]
    for _ in range(2):
        project.run("python", "-c", EMIT, json.dumps(DRIFT), env=env, check=True)
    runs = _settled(api, 2, 600)
    states = sorted(r.state_type.value for r in runs)
    assert states == ["CANCELLED", "COMPLETED"], [(r.name, r.state_type, r.state.message) for r in runs]
    done = next(r for r in runs if r.state_type.value == "COMPLETED")
    assert done.parameters["trigger"] == "drift"
    assert done.parameters["detail"]["scores"] == {"output": 2.5, "input": 0.4}  # the event's own payload
    history = project.root / "artifacts/retrain/history.jsonl"
    (first,) = [json.loads(line) for line in history.read_text().splitlines()]
    assert first["trigger"] == "drift" and first["outcome"] in ("promoted", "rejected"), first
    assert done.state.name == first["outcome"].capitalize()  # what the UI's runs list shows
    if first["outcome"] == "promoted":  # packaged and deployed, health-checked
        current = json.loads((project.root / ".genloop/deploy/current.json").read_text())
        assert current["bento"] == first["deployed"]
    else:  # the briefly trained model lost to the baseline: the gate says why
        assert first["reasons"] and first["version"], first

    project.run("python", "-c", EMIT, json.dumps(DRIFT), env=env, check=True)
    runs = _settled(api, 3, 300)
    assert runs[-1].state_type.value == "COMPLETED" and runs[-1].state.name == "Skipped", runs[-1].state
    assert "--force" in runs[-1].state.message  # how to run past the cooldown
    second = json.loads(history.read_text().splitlines()[-1])
    assert second["outcome"] == "skipped" and second["skipped"].startswith("cooldown: "), second
    status = project.run("genloop", "status", check=True).stdout
    assert "Retrain (last runs)" in status and "cooldown" in status
