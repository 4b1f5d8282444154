"""The Prefect data flow under Prefect's own test harness: same decisions, same dvc.lock as `dvc repro`."""

from __future__ import annotations

import shutil

import pytest
from prefect.testing.utilities import prefect_test_harness

from tests.conftest import SMALL_BASELINE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_flow_writes_the_same_lock_as_dvc_repro(harness, project, tmp_path):
    from flows.data import data

    meta = data()
    assert meta["kind"] == "image" and meta["counts"]["train"] > 0
    flow_lock = (project.root / "dvc.lock").read_text()
    assert "up to date" in project.run("dvc", "repro", "augment", check=True).stdout

    twin = tmp_path / "twin"
    shutil.copytree(
        project.root, twin, ignore=shutil.ignore_patterns("data", "artifacts", "dvc.lock", ".dvc")
    )
    shutil.copytree(project.root / ".dvc", twin / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    project.root = twin
    project.run("dvc", "repro", "augment", check=True)
    assert (twin / "dvc.lock").read_text() == flow_lock


def test_flow_stops_at_the_gate(harness, project, text_folder):
    from flows.data import data

    (text_folder / "bad.txt").write_bytes(b"\xc3\x28 not utf-8")
    project.set_params(data={"source": str(text_folder)}, model={"family": "gpt"})
    state = data(return_state=True)
    assert state.is_failed()
    assert not (project.root / "data/processed").exists()
    assert not (project.root / "data/raw").exists()  # the first batch was rejected: data/ as it was


def test_train_flow_runs_every_stage_through_dvc(harness, project):
    from flows.train import train

    project.set_params(
        model={"vae": {"latent_dim": 4, "hidden": [32]}},
        train={"max_steps": 10, "steps_per_epoch": 5, "val_batches": 1, "sample_every_n_epochs": 0},
        evaluate=SMALL_BASELINE,
    )
    result = train()
    assert result["train"]["family"] == "vae" and result["train"]["epochs"] == 2
    assert result["evaluate"]["decision"] in ("promote", "reject")  # the gate ran and said why
    assert result["evaluate"]["reasons"]
    assert "up to date" in project.run("dvc", "repro", "evaluate", check=True).stdout


def test_tune_flow_runs_two_workers_on_one_study(harness, project):
    import json

    from flows.tune import tune

    project.set_params(
        model={"vae": {"arch": "mlp", "hidden": [32], "latent_dim": 4, "prior_components": 0}},
        train={"steps_per_epoch": 5, "val_batches": 1, "sample_every_n_epochs": 0},
        tune={"enabled": True, "workers": 2, "n_trials": 5, "max_steps": 20, "startup_trials": 2},
    )
    summary = tune()
    trials = json.loads((project.root / "artifacts/tune/trials.json").read_text())
    assert sorted(t["number"] for t in trials) == [0, 1, 2, 3, 4]  # each once, the budget not exceeded
    assert sum(summary["trials"].values()) == 5
    complete = [t["value"] for t in trials if t["state"] == "complete"]
    assert summary["best_value"] == min(complete)

    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(project.root / "artifacts/tune/study/journal.log")))
    study = optuna.load_study(study_name=summary["study"], storage=storage)
    assert len({t.user_attrs["owner"]["pid"] for t in study.trials}) == 2  # two processes took trials
