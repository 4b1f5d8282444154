"""The warm runner (genloop/runner.py): a stage through it says and exits as it would alone, a kill -9 of
the command stops the stage (or the flow) and everything it started, signals reach it, a flow reads its
command's Prefect settings, and the project's code is imported fresh for every stage."""

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
    kids, tree = [], []
    for kid in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):  # ended meanwhile (a flow's short stages come and go)
            if Path(kid.cwd()) == project:
                kids.append(kid)
                tree += kid.children(recursive=True)
    return kids + tree


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

    with ended(client):
        procs = wait_for(workers, "the stage never started its two workers")
        kill_and_check(client, procs, pid)


@contextlib.contextmanager
def ended(client: subprocess.Popen):
    """The command killed at the end, should the test fail before it does (and its flow run on)."""
    try:
        yield
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


def kill_and_check(client: subprocess.Popen, procs: list[psutil.Process], pid: int) -> None:
    """SIGKILL to the command alone: every process of `procs` ends with it, and the runner `pid` goes on."""
    assert client.poll() is None
    client.kill()
    client.wait()
    _, alive = psutil.wait_procs(procs, timeout=5)
    assert not alive, f"still running after the command was killed: {[p.cmdline() for p in alive]}"
    assert psutil.pid_exists(pid), "the runner itself goes on"


def test_kill_9_of_a_flow_stops_it_and_its_stage(digits):
    """`genloop flow lifecycle` runs in a child of the runner too, and its stages in others: SIGKILL to the
    command while the flow trains ends the flow's process, DVC, and the stage's process at once."""
    project = digits
    project.set_params(train=QUICK | {"max_steps": 100_000})
    env = {**os.environ, **project.env}
    pid = runner_pid(env)
    client = subprocess.Popen([str(BIN / "genloop"), "flow", "lifecycle"], cwd=project.root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    last = project.root / "artifacts/train/checkpoints/last.ckpt"  # an epoch done: the stage trains

    def flow_and_stage() -> list[psutil.Process]:
        procs = stage_children(pid, project.root)
        with contextlib.suppress(psutil.Error):
            ours = [p for p in procs if p.ppid() == pid]  # the runner's children: the flow's and the stage's
            return procs if len(ours) == 2 and last.exists() else []
        return []

    with ended(client):
        procs = wait_for(flow_and_stage, "the flow's train stage never ran through the runner", timeout=180)
        kill_and_check(client, procs, pid)


def test_a_flow_through_the_runner_takes_its_prefect_settings_from_its_command(digits):
    """Prefect reads its settings when imported, in the runner: the flow's child reads them again from its
    command's environment (here a server address that answers nothing), not the runner's. (With a
    heartbeat set, the CLI takes Prefect's settings as they are, rather than a copy made to turn it off.)"""
    env = {**os.environ, **digits.env}
    env.pop("PREFECT_API_URL", None)
    runner_pid(env)
    nowhere = {"PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
    run = digits.run("genloop", "flow", "deploy", env=nowhere)
    assert run.returncode != 0 and "http://127.0.0.1:9/api" in run.stderr, run.stderr[-2000:]


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
