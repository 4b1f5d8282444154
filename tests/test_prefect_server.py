"""`genloop up` / `genloop down`: a real Prefect server, a worker, and a deployment run from it."""

from __future__ import annotations

import os
import re
import socket
import time

import psutil
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_up_deploys_runs_a_deployment_and_down_stops_everything(project):
    port = free_port()
    env = {
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_HOME": str(project.root / ".genloop/prefect"),
    }
    try:
        up = project.run("genloop", "up", "--port", str(port), check=True)
        assert f"http://127.0.0.1:{port}" in up.stdout
        listed = project.run("prefect", "deployment", "ls", env=env, check=True).stdout
        assert "data/data" in listed and "train/train" in listed
        run = project.run("prefect", "deployment", "run", "data/data", "--watch", env=env)
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr
        assert (project.root / "data/processed/meta.json").is_file()  # the worker ran the DVC stages
        crashed_run_is_marked_and_a_rerun_skips_what_dvc_completed(project, env)
    finally:
        pids = [int((project.root / f".genloop/{n}.pid").read_text()) for n in ("worker", "server")
                if (project.root / f".genloop/{n}.pid").is_file()]  # fmt: skip
        down = project.run("genloop", "down")
    assert down.returncode == 0 and "stopped: worker, server" in down.stdout
    time.sleep(0.5)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def crashed_run_is_marked_and_a_rerun_skips_what_dvc_completed(project, env: dict) -> None:
    """kill -9 of a flow run's process (and its stage) mid-run: the worker marks the run Crashed, and
    the next run skips the stages DVC completed and finishes."""
    project.set_params(augment={"seed": 1338})  # augment must run again
    started = project.run("prefect", "deployment", "run", "data/data", env=env, check=True).stdout
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", started)[1]
    deadline = time.monotonic() + 180
    victim = None
    while victim is None:
        assert time.monotonic() < deadline, "the flow run never reached augment"
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("PREFECT__FLOW_RUN_ID") != run_id:
                    continue
                stages = [" ".join(c.cmdline()) for c in proc.children(recursive=True)]
                if any("repro" in c and "augment" in c for c in stages):
                    victim = proc  # the flow run's process, while its augment stage runs
                    break
            except psutil.Error:
                continue
        time.sleep(0.1)
    for proc in [*victim.children(recursive=True), victim]:
        proc.kill()
    while "CRASHED" not in project.run("prefect", "flow-run", "inspect", run_id, env=env).stdout.upper():
        assert time.monotonic() < deadline, "the killed run was never marked crashed"
        time.sleep(1)
    rerun = project.run("prefect", "deployment", "run", "data/data", "--watch", env=env)
    assert rerun.returncode == 0 and "Completed" in rerun.stdout, rerun.stdout + rerun.stderr
