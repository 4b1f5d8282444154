"""`genloop up` / `genloop down`: a real Prefect server, a worker, and a deployment run from it."""

from __future__ import annotations

import os
import socket
import time

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
    finally:
        pids = [int((project.root / f".genloop/{n}.pid").read_text()) for n in ("worker", "server")
                if (project.root / f".genloop/{n}.pid").is_file()]  # fmt: skip
        down = project.run("genloop", "down")
    assert down.returncode == 0 and "stopped: worker, server" in down.stdout
    time.sleep(0.5)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
