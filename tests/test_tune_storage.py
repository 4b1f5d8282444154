"""The tune study's storage and workers: a study killed with SIGKILL and resumed, failed trials recorded
with their reason, and a study in PostgreSQL shared by workers in two checkouts, one killed mid-trial."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import read_tune, set_space
from tests.postgres_server import postgres


def study_of(project):
    """The study in the project's journal, read as another process would (None while the journal holds
    no study yet: the file is made before the study's first record is written)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    journal = project.root / ".genloop/tune/study/journal.log"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    summaries = optuna.get_all_study_summaries(storage)
    if not summaries:
        return None
    (summary,) = summaries
    return optuna.load_study(study_name=summary.study_name, storage=storage)


@pytest.mark.slow
def test_a_study_killed_with_sigkill_continues_where_it_stopped(digits_project):
    from optuna.trial import TrialState

    project = digits_project
    project.set_params(tune={"n_trials": 4, "max_steps": 400, "pruner": "none"})
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "genloop"), "stage", "tune"],
        cwd=project.root,
        env={**os.environ, **project.env, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline, running = time.monotonic() + 300, None
    try:
        while time.monotonic() < deadline:  # one trial done, the next with a checkpoint of its own
            assert proc.poll() is None, "the stage ended before it could be killed"
            time.sleep(0.5)
            study = (project.root / ".genloop/tune/study/journal.log").is_file() and study_of(project)
            if not study:
                continue
            trials = study.get_trials(deepcopy=False)
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            running = next((t for t in trials if t.state == TrialState.RUNNING), None)
            folder = running and running.user_attrs.get("folder")
            if done and folder and (project.root / folder / "checkpoints/last.ckpt").is_file():
                break
        else:
            pytest.fail("no trial finished and none was running with a checkpoint within 5 minutes")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {t.number: t.value for t in study_of(project).get_trials() if t.state == TrialState.COMPLETE}
    # the worst moment too: killed while it held the journal's lock, a symlink beside it, as one made
    # with a relative path leaves it (dangling from its folder: the next worker used to spin forever)
    lock = project.root / ".genloop/tune/study/journal.log.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(".genloop/tune/study/journal.log")

    project.run("genloop", "stage", "tune", check=True)
    trials = read_tune(project, "trials.json")
    for number, value in before.items():  # finished trials are kept as they were
        assert trials[number]["state"] == "complete" and trials[number]["value"] == value
    killed = trials[running.number]
    assert killed["state"] == "fail" and "died" in killed["reason"]
    (retry,) = [t for t in trials if t["source"] == f"retry of trial {running.number}"]
    assert retry["params"] == killed["params"] and retry["state"] == "complete"
    assert retry["resumed"] is True  # from the killed trial's last checkpoint
    # the budget holds over the whole study: the retry takes the killed trial's place
    assert [t["number"] for t in trials] == list(range(5))
    assert [t["state"] for t in trials].count("complete") == 4
    assert read_tune(project, "summary.json")["trials"] == {
        "complete": 4, "pruned": 0, "fail": 1, "running": 0, "waiting": 0
    }  # fmt: skip


@pytest.mark.slow
def test_failed_trials_are_recorded_with_their_reason_and_the_study_goes_on(digits_project, monkeypatch):
    from tasks.core.params import load
    from tasks.tuning import study as tuning

    project = digits_project
    # an accelerator this machine does not have makes Lightning raise; a huge step makes the loss NaN
    project.set_params(tune={"n_trials": 3, "max_steps": 20}, train={"grad_clip": 0.0})
    set_space(
        project,
        {
            "train.accelerator": {"type": "categorical", "choices": ["cpu", "mps"]},
            "train.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e30, "log": True},
        },
    )
    params = load(project.root / "params.yaml")
    name = tuning.study_name(params)
    study = tuning.open_study(params, name=name)
    study.enqueue_trial({"train.accelerator": "mps", "train.lr": 0.002})
    study.enqueue_trial({"train.accelerator": "cpu", "train.lr": 1.0e30})
    study.enqueue_trial({"train.accelerator": "cpu", "train.lr": 0.002})
    assert tuning.work(params, name) == 3
    trials = {t.number: t for t in study.get_trials()}
    assert trials[0].state.name == "FAIL" and "mps" in trials[0].user_attrs["reason"].lower()
    assert trials[1].state.name == "FAIL"
    assert "nan" in trials[1].user_attrs["reason"].lower() or "inf" in trials[1].user_attrs["reason"]
    assert trials[2].state.name == "COMPLETE" and math.isfinite(trials[2].value)


@pytest.mark.slow
def test_two_checkouts_share_a_postgresql_study_and_a_dead_workers_trial_runs_again(digits_project, tmp_path):
    """Two workers in two folders on one study in PostgreSQL; one is killed with SIGKILL mid-trial. The
    other fails that trial by its heartbeat, runs it again, and the study ends at exactly n_trials
    complete trials."""
    import optuna
    from optuna.trial import TrialState

    from tests.conftest import copy_project
    from tests.postgres_server import new_database

    project = digits_project
    with postgres() as server:
        url = new_database(server).replace("postgresql://", "postgresql+psycopg://")
        project.set_params(
            tune={
                "storage": url,
                "n_trials": 6,
                "max_steps": 150,
                "pruner": "none",
                "heartbeat_s": 1,
                "grace_s": 4,
            }
        )
        other = copy_project(project.root, tmp_path / "other")  # a second checkout of the same project

        def worker(root: Path) -> subprocess.Popen:
            return subprocess.Popen(
                [str(Path(sys.executable).parent / "genloop"), "tune", "worker"],
                cwd=root, env={**os.environ, **project.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, start_new_session=True,
            )  # fmt: skip

        @functools.cache
        def storage() -> optuna.storages.RDBStorage:  # one connection pool: polled every 0.1 s
            return optuna.storages.RDBStorage(url)

        def trials() -> list:
            (summary,) = optuna.get_all_study_summaries(storage())
            return optuna.load_study(study_name=summary.study_name, storage=storage()).get_trials()

        first, second = worker(project.root), worker(other.root)
        try:
            deadline, victim = time.monotonic() + 180, None
            while victim is None:  # a trial of the first worker, training (its values drawn)
                if first.poll() is not None:
                    pytest.fail(
                        f"the first worker ended before one of its trials was seen:\n{first.stdout.read()}"
                    )
                assert time.monotonic() < deadline, "no trial started"
                time.sleep(0.1)
                pids = {first.pid} | {c.pid for c in psutil.Process(first.pid).children(recursive=True)}
                with contextlib.suppress(Exception):
                    victim = next(
                        t for t in trials()
                        if t.state == TrialState.RUNNING and t.params and t.user_attrs["owner"]["pid"] in pids
                    )  # fmt: skip
        finally:
            with contextlib.suppress(ProcessLookupError):  # ended already: the failure above says how
                os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        out, _ = second.communicate(timeout=300)
        assert second.returncode == 0, out
        ended = trials()
        storage().engine.dispose()  # its connections closed before the server stops
        assert [t.state for t in ended].count(TrialState.COMPLETE) == 6 and len(ended) == 7, out
        dead = ended[victim.number]
        assert dead.state == TrialState.FAIL
        (retry,) = [t for t in ended if t.system_attrs.get("failed_trial") == victim.number]
        # the values the dead trial had drawn are kept (killed between two draws, it has fewer)
        assert retry.state == TrialState.COMPLETE and dead.params.items() <= retry.params.items()
        # the stage in the first checkout runs no more trials and reports the study
        project.run("genloop", "stage", "tune", check=True)
        summary = read_tune(project, "summary.json")
        assert summary["storage"] == url and summary["trials"]["complete"] == 6
        rows = read_tune(project, "trials.json")
        assert rows[victim.number]["reason"].startswith("its worker died")
        assert rows[retry.number]["source"] == f"retry of trial {victim.number}"
        assert not (project.root / ".genloop/tune/study/journal.log").exists()  # all of it in PostgreSQL


OPEN = "import sys\nfrom tasks.tuning.study import open_storage\nopen_storage(sys.argv[1])\n"


@pytest.mark.slow
def test_workers_started_at_once_on_a_new_database_both_open_it():
    """Optuna makes its tables when a process first opens a database: two at once both made them, and one
    failed (in 4 of 6 tries before the lock). Three new databases, two processes each, all open them."""
    from tests.postgres_server import new_database

    with postgres() as server:
        for _ in range(3):
            url = new_database(server).replace("postgresql://", "postgresql+psycopg://")
            procs = [
                subprocess.Popen([sys.executable, "-c", OPEN, url], stderr=subprocess.PIPE, text=True)
                for _ in range(2)
            ]
            for proc in procs:
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err[-2000:]
