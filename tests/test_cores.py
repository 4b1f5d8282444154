"""The plan for the machine's cores (models/cores.py): shares, overrides, the ledger of live processes,
and a process's threads following it as others start and end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from models import cores


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    """A ledger of this test's own, and this process outside the plan before and after."""
    monkeypatch.setenv("GENLOOP_CORES_DIR", str(tmp_path / "ledger"))
    for var in ("GENLOOP_CORES", "GENLOOP_THREADS", *cores.THREAD_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    cores.release()
    yield tmp_path / "ledger"
    cores.release()
    for var in cores.THREAD_VARS:  # claim() sets them for child processes; the others here need none
        os.environ.pop(var, None)


def claim_of(pid: int, start: float, threads: int | None = None) -> dict:
    return {"pid": pid, "start": start, "role": "stage train", "project": "/p", "threads": threads}


def test_shares_divide_the_cores_equally_with_the_remainder_to_the_oldest():
    live = [claim_of(1, 1.0), claim_of(2, 2.0), claim_of(3, 3.0)]
    assert cores.shares(live, 8) == {1: 3, 2: 3, 3: 2}
    assert cores.shares(live[:1], 8) == {1: 8}
    assert cores.shares(live, 2) == {1: 1, 2: 1, 3: 1}  # never less than one thread


def test_a_fixed_claim_keeps_its_threads_and_the_others_share_the_rest():
    live = [claim_of(1, 1.0, threads=2), claim_of(2, 2.0), claim_of(3, 3.0)]
    assert cores.shares(live, 6) == {1: 2, 2: 2, 3: 2}
    assert cores.shares(live, 2) == {1: 2, 2: 1, 3: 1}


def test_settings_the_environment_wins_over_params_and_auto_is_the_machine(ledger, tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("cores: {total: 3, threads: auto}\n")
    assert cores.settings() == cores.Settings(3, None, "cores.total")
    monkeypatch.setenv("GENLOOP_CORES", "5")
    monkeypatch.setenv("GENLOOP_THREADS", "1")
    assert cores.settings() == cores.Settings(5, 1, "GENLOOP_CORES")
    assert cores.variables() == {"GENLOOP_CORES": "5", "GENLOOP_THREADS": "1"}
    monkeypatch.delenv("GENLOOP_CORES")
    (tmp_path / "params.yaml").write_text("cores: {total: auto, threads: auto}\n")
    assert cores.settings().total == cores.machine_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("GENLOOP_CORES", "many")
    with pytest.raises(ValueError, match="GENLOOP_CORES: a whole number of cores or auto"):
        cores.settings()


def test_params_name_a_wrong_cores_value(tmp_path):
    from tasks.core.errors import GenloopError
    from tasks.core.params import load

    text = (ROOT / "params.yaml").read_text().replace("  total: auto ", "  total: 0    ")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(GenloopError, match=r"cores\.total"):
        load(tmp_path / "params.yaml")


def test_the_ledger_drops_processes_that_are_gone(ledger):
    ledger.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    pid = int(dead.stdout)
    (ledger / f"{pid}.json").write_text(json.dumps(claim_of(pid, time.time())))
    reused = ledger / f"{os.getppid()}.json"  # a live pid, but not the process that wrote the file
    reused.write_text(json.dumps(claim_of(os.getppid(), 12.0)))
    assert cores.claims(ledger) == []
    assert list(ledger.iterdir()) == []  # both removed


FOLLOWER = """
import sys, time, torch
from models import cores
cores.claim("stage train")
seen = []
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    cores.follow()
    seen.append(torch.get_num_threads())
    if open(sys.argv[1]).read().strip() == "stop":
        break
    time.sleep(0.05)
runs = [n for i, n in enumerate(seen) if i == 0 or seen[i - 1] != n]  # each change once
print(torch.get_num_interop_threads(), *runs)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to share")
def test_a_process_follows_the_plan_as_another_starts_and_ends(ledger, tmp_path):
    """Alone it takes every core; beside a second claim its share; after, every core again. Torch's
    inter-op pool is one thread."""
    total = cores.machine_cores()
    flag = tmp_path / "flag"
    flag.write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", FOLLOWER, str(flag)], env=env, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(c["pid"] == proc.pid for c in cores.claims(ledger)):
        assert time.monotonic() < deadline and proc.poll() is None, "the process never joined the plan"
        time.sleep(0.05)
    time.sleep(1.5)
    assert cores.claim("monitor") == total // 2  # the newer claim: the remainder goes to the older
    assert os.environ["OMP_NUM_THREADS"] == str(total // 2)
    time.sleep(2.5)  # it reads the ledger again within a second
    cores.release()
    time.sleep(2.5)
    flag.write_text("stop")
    out, _ = proc.communicate(timeout=60)
    interop, *seen = (int(x) for x in out.split())
    assert interop == 1
    assert seen == [total, total - total // 2, total]
    assert cores.claims(ledger) == []  # it left the plan when it exited


def test_status_shows_the_plan(ledger):
    from io import StringIO

    from rich.console import Console

    from genloop.status import cores_plan

    cores.claim("serve")
    out = StringIO()
    cores_plan(Console(file=out, width=200))
    text = out.getvalue()
    assert f"Cores: {cores.machine_cores()} (from this machine (auto))" in text
    assert f"pid {os.getpid()}" in text and "serve" in text
    cores.release()
    out = StringIO()
    cores_plan(Console(file=out, width=200))
    assert "none doing math now" in out.getvalue()


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
