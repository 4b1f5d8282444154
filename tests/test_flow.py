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


def test_lifecycle_flow_serves_and_a_second_run_changes_nothing(harness, champion):
    """On a project whose champion is trained and evaluated by `dvc repro evaluate` (the train flow
    leaves the same: the test above), the lifecycle flow finds every stage up to date but package,
    serves the champion, and says so; run again, it runs nothing and deploys nothing."""
    import json

    from flows.lifecycle import lifecycle
    from tests.conftest import free_port

    champion.set_params(serve={"port": free_port(), "ready_timeout_s": 90})
    try:
        first = lifecycle()
        ran = {s for s, what in first["stages"].items() if what == "ran"}
        assert ran == {"package"} and first["decision"] == "promote", first
        assert first["deploy"] == "deployed" and first["url"]
        current = json.loads((champion.root / ".genloop/deploy/current.json").read_text())
        assert current["bento"] == first["deployed"]
        second = lifecycle()
        assert second["stages"].pop("tune") == "off"  # tune.enabled false: not "ran", whatever DVC did
        assert set(second["stages"].values()) == {"unchanged"} and second["deploy"] == "already served"
        saved = json.loads((champion.root / "artifacts/lifecycle/summary.json").read_text())
        assert saved["stages"] == second["stages"] | {"tune": "off"}
        assert saved["deployed"] == first["deployed"]
    finally:
        champion.run("genloop", "undeploy")


def test_lifecycle_retries_what_the_network_failed_and_never_a_refused_source(harness, project):
    import asyncio

    from prefect.client.schemas.objects import StateType

    from flows.lifecycle import lifecycle
    from tasks.core.orchestration import transient

    class State:
        def __init__(self, message: str) -> None:
            self.message = message

    outage = "stage collect failed (dvc repro exit 1):\nEndpointConnectionError: Could not connect"
    assert transient(None, None, State(outage))
    assert not transient(
        None, None, State("stage validate failed (dvc repro exit 1):\n2 of 9 expectations failed")
    )
    project.set_params(data={"source": str(project.root / "no-such-folder")})
    state = lifecycle(return_state=True)
    assert state.type == StateType.FAILED

    async def collect_runs() -> list:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            runs = await client.read_task_runs()
            mine = [r for r in runs if r.flow_run_id == state.state_details.flow_run_id]
            stages = [r for r in mine if not r.name.startswith(("lifecycle", "site"))]  # bookkeeping
            return sorted(r.name.split("-")[0] for r in stages), mine

    names, runs = asyncio.run(collect_runs())
    assert names == ["collect", "feedback"]  # the flow stopped at collect: nothing after it ran
    (collect,) = [r for r in runs if r.name.startswith("collect")]
    assert collect.run_count == 1  # not retried
    said = str(state.result(raise_on_failure=False))  # the stage's own one line, not DVC's wrapping
    assert said == f"stage collect: source folder {project.root / 'no-such-folder'} does not exist", said


def test_tune_flow_runs_two_workers_on_one_study(harness, digits):
    import json

    from flows.tune import tune

    digits.set_params(
        model={"vae": {"arch": "mlp", "hidden": [32], "latent_dim": 4, "prior_components": 0}},
        train={"steps_per_epoch": 5, "val_batches": 1, "sample_every_n_epochs": 0},
        tune={"enabled": True, "workers": 2, "n_trials": 5, "max_steps": 20, "startup_trials": 2},
    )
    summary = tune()
    trials = json.loads((digits.root / "artifacts/tune/trials.json").read_text())
    assert sorted(t["number"] for t in trials) == [0, 1, 2, 3, 4]  # each once, the budget not exceeded
    assert sum(summary["trials"].values()) == 5
    complete = [t["value"] for t in trials if t["state"] == "complete"]
    assert summary["best_value"] == min(complete)

    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(digits.root / ".genloop/tune/study/journal.log")))
    study = optuna.load_study(study_name=summary["study"], storage=storage)
    assert len({t.user_attrs["owner"]["pid"] for t in study.trials}) == 2  # two processes took trials


def test_a_command_line_run_sends_no_heartbeat_unless_a_setting_asks():
    """Prefect's heartbeat thread held the end of every `genloop flow` run for 0.5 s on average."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    from genloop.cli import _heartbeat_unless_configured

    with _heartbeat_unless_configured():
        assert get_current_settings().flows.heartbeat_frequency is None
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}), _heartbeat_unless_configured():
        assert get_current_settings().flows.heartbeat_frequency == 60
