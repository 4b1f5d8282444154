"""The warm stage runner (genloop/runner.py): a stage through it says and exits as it would alone, a kill -9
of the command stops the stage and everything it started, signals reach it, and the project's code is
imported fresh for every stage."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from genloop import runner
from tests.conftest import BIN, REPO
from tests.test_train import QUICK

pytestmark = pytest.mark.slow


def runner_pid(env: dict) -> int:
    """The runner of this environment, started if needed, once it answers."""
    proc = subprocess.run([str(BIN / "genloop"), "runner", "start"], env=env, capture_output=True, text=True,
                          timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return int(proc.stdout.split("pid")[-1])


def stage_children(pid: int, project: Path) -> list[psutil.Process]:
    """The runner's children running stages in `project` (the runner serves other tests' stages too),
    with everything they started."""
    kids = []
    for kid in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            if Path(kid.cwd()) == project:
                kids.append(kid)
    return kids + [g for k in kids for g in k.children(recursive=True)]


def wait_for(predicate, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return found


def test_a_stage_through_the_runner_says_and_exits_as_alone(project):
    env = {**os.environ, **project.env}
    runner_pid(env)
    warm = project.run("genloop", "stage", "train")  # no data yet: a clear error
    alone = project.run("genloop", "stage", "train", env={"GENLOOP_RUNNER": "0"})
    assert warm.returncode == alone.returncode == 1
    assert warm.stderr == alone.stderr and "error:" in warm.stderr and "dvc repro augment" in warm.stderr
    ok = project.run("genloop", "stage", "collect", check=True)
    assert '"files": 1797' in ok.stdout


def test_kill_9_of_the_command_stops_the_stage_and_what_it_started(digits):
    """A tune stage with two worker processes, through the runner: SIGKILL to `genloop stage tune` alone
    (as when a flow run's process tree is killed) ends the stage's process and both workers at once."""
    project = digits
    project.set_params(tune={"enabled": True, "workers": 2, "n_trials": 4, "max_steps": 100_000})
    env = {**os.environ, **project.env}
    pid = runner_pid(env)
    client = subprocess.Popen([str(BIN / "genloop"), "stage", "tune"], cwd=project.root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def workers() -> list[psutil.Process]:
        procs = stage_children(pid, project.root)
        tree = [p for p in procs if "worker" in " ".join(p.cmdline())]
        return procs if len(tree) == 2 else []

    procs = wait_for(workers, "the stage never started its two workers")
    assert client.poll() is None
    client.kill()
    client.wait()
    _, alive = psutil.wait_procs(procs, timeout=2)
    assert not alive, f"still running after the command was killed: {alive}"
    assert psutil.pid_exists(pid), "the runner itself goes on"


def test_signals_reach_the_stage(digits):
    project = digits
    project.set_params(train=QUICK | {"max_steps": 100_000})
    env = {**os.environ, **project.env}
    pid = runner_pid(env)
    client = subprocess.Popen([str(BIN / "genloop"), "stage", "train"], cwd=project.root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    last = project.root / "artifacts/train/checkpoints/last.ckpt"  # an epoch done: Lightning's loop runs
    wait_for(lambda: stage_children(pid, project.root) and last.exists(), "training never started")
    stage = stage_children(pid, project.root)
    client.send_signal(signal.SIGINT)  # Ctrl+C
    out, err = client.communicate(timeout=60)
    # Lightning's own answer to Ctrl+C, from the stage's process, and its exit status 1 as the command's
    assert "Detected KeyboardInterrupt" in err and client.returncode == 1, (client.returncode, out, err)
    alive = psutil.wait_procs(stage, timeout=5)[1]
    assert not alive, [p.cmdline() for p in alive]


def test_each_stage_imports_the_projects_code_afresh(digits, tmp_path):
    """An edit between two stages is seen by the second: the runner keeps libraries, not our modules."""
    code = tmp_path / "code"
    for name in ("genloop", "tasks", "models", "service", "flows"):
        shutil.copytree(REPO / name, code / name, ignore=shutil.ignore_patterns("__pycache__"))
    project = digits
    env = {**os.environ, **project.env, "PYTHONPATH": str(code)}
    pid = runner_pid(env)
    first = project.run("genloop", "stage", "collect", env={"PYTHONPATH": str(code)}, check=True)
    assert "EDITED" not in first.stdout
    with open(code / "tasks/collect.py", "a") as f:
        f.write("\nprint('EDITED')\n")
    second = project.run("genloop", "stage", "collect", env={"PYTHONPATH": str(code)}, check=True)
    assert "EDITED" in second.stdout
    assert len(stage_children(pid, project.root)) == 0  # each stage's process ended with it


def test_status_shows_the_runner(digits):
    env = {**os.environ, **digits.env}
    pid = runner_pid(env)
    out = digits.run("genloop", "status", check=True).stdout
    assert f"Stage runner: pid {pid}" in out


def test_the_runner_is_off_where_asked(project, monkeypatch):
    monkeypatch.setenv("GENLOOP_RUNNER", "0")
    assert not runner.enabled()
    assert runner.forward(["stage", "collect"]) is None
    monkeypatch.delenv("GENLOOP_RUNNER")
    assert runner.enabled() is sys.platform.startswith("linux")


def test_the_fingerprint_ignores_what_a_stage_reads_when_it_runs():
    env = {"HOME": "/root", "LANG": "C.UTF-8"}
    same = env | {"BENTOML_HOME": "/x", "DVC_STAGE": "train", "PATH": "/bin", "OMP_NUM_THREADS": "3"}
    same |= {"GENLOOP_CACHE_DIR": "/c", "PREFECT_API_URL": "http://x", "AWS_ENDPOINT_URL": "http://s3"}
    assert runner.fingerprint(env) == runner.fingerprint(same)
    assert runner.fingerprint(env) != runner.fingerprint(env | {"TORCH_LOGS": "dynamo"})
    assert runner.fingerprint(env) != runner.fingerprint(env | {"PYTHONPATH": str(Path("/elsewhere"))})
