"""The tune stage: the search space's checks, a small study end to end through the real CLI (and train
using its best values), a study killed with SIGKILL and resumed, failed trials, the report in a
browser with no network, and the study in PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tasks.core.errors import GenloopError
from tests.conftest import REPO, SMALL_MODEL, SMALL_TRAIN, free_port, read_tune

CHROMIUM = Path("/usr/bin/chromium")


def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def space_error(entry: dict, key: str) -> str:
    from tasks.core.params import parse

    raw = raw_params()
    raw["tune"]["space"] = {key: entry}
    with pytest.raises(GenloopError) as err:
        parse(raw)
    return str(err.value)


@pytest.mark.parametrize(
    ("key", "entry", "message"),
    [
        ("train.weight_decy", {"type": "float", "low": 0.1, "high": 1},
         "tune.space.train.weight_decy: unknown key (did you mean train.weight_decay?)"),
        ("model.vae.latent", {"type": "int", "low": 1, "high": 8},
         "tune.space.model.vae.latent: unknown key (did you mean model.vae.latent_dim?)"),
        ("evaluate.seed", {"type": "int", "low": 0, "high": 8},
         "only train.<key> and model.<family>.<key> can be tuned"),
        ("train.lr", {"type": "float", "low": 0.1, "high": 0.01},
         "tune.space.train.lr: empty range (low 0.1 is not below high 0.01)"),
        ("train.lr", {"type": "float", "low": 0, "high": 0.01, "log": True},
         "tune.space.train.lr: a log scale needs low > 0 (got 0.0)"),
        ("train.batch_size", {"type": "categorical", "choices": 64},
         "tune.space.train.batch_size: choices must be a non-empty list (got 64)"),
        # values the typed params refuse: a latent size of 0, a float where an int is declared
        ("model.vae.latent_dim", {"type": "int", "low": 0, "high": 8},
         "tune.space.model.vae.latent_dim: 0 would be refused as model.vae.latent_dim"),
        ("train.batch_size", {"type": "float", "low": 16, "high": 64},
         "would be refused as train.batch_size"),
        ("train.max_steps", {"type": "int", "low": 10, "high": 100},
         "cannot be tuned (each trial's budget is tune.max_steps)"),
        ("train.lr", {"type": "loguniform", "low": 1e-4, "high": 1e-2},
         "tune.space.train.lr.type: Input should be 'float', 'int' or 'categorical' (got 'loguniform')"),
    ],
)  # fmt: skip
def test_the_search_space_is_checked_key_by_key(key, entry, message):
    assert message in space_error(entry, key)


def test_every_family_has_a_space_and_trials_apply_it():
    from tasks.core.params import load, with_values
    from tasks.core.space import active
    from tasks.tuning.study import trial_params

    params = load(REPO / "params.yaml")
    for family in ("vae", "gan", "gpt"):
        keys = set(active(params.tune.space, family))
        assert any(k.startswith(f"model.{family}.") for k in keys) and "train.lr" in keys
        assert not any(k.startswith("model.") and not k.startswith(f"model.{family}.") for k in keys)
    p = trial_params(
        with_values(params, {"train.devices": 1}), {"train.lr": 0.005, "model.vae.latent_dim": 8}
    )
    assert p.train.lr == 0.005 and p.model.vae.latent_dim == 8
    assert p.train.max_steps == params.tune.max_steps and p.train.use_tuned is False


def test_the_private_optuna_api_in_use_is_there_in_the_pinned_version():
    """tasks/tuning/study.py runs a trial's heartbeat itself (ask/tell has no public one): this fails
    when an Optuna inside the pin moves what it relies on, and when the pin is widened."""
    import inspect
    import re

    import optuna
    from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages._heartbeat import get_heartbeat_thread

    pin = re.search(r'"optuna>=([0-9.]+),<([0-9.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin and (pin[1], pin[2]) == ("5.0", "5.1"), "widen the pin only after checking the API below"
    assert optuna.__version__.startswith("5.0."), optuna.__version__
    assert list(inspect.signature(get_heartbeat_thread).parameters) == ["trial_id", "storage"]
    study = optuna.create_study()
    trial = study.ask()
    assert isinstance(study._storage, BaseStorage)
    assert study._storage.get_trial(trial._trial_id).number == trial.number
    with get_heartbeat_thread(trial._trial_id, study._storage):  # in memory: a thread that does nothing
        pass
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study.trials[0])
    (waiting,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(waiting) == 0


@pytest.mark.slow
def test_a_small_study_end_to_end_then_train_uses_its_best_values(digits_project):
    project = digits_project
    project.run("dvc", "repro", "tune", check=True)
    trials = read_tune(project, "trials.json")
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    for t in trials:
        assert set(t) >= {"number", "state", "params", "value", "epochs", "device_seconds", "reason"}
        assert set(t["params"]) == {"train.lr", "model.vae.latent_dim"}  # model.gan.width: not this family
        assert t["state"] in ("complete", "pruned") and 1 <= t["epochs"] <= 10 and t["device_seconds"] > 0
        assert (t["state"] == "pruned") == (t["reason"] is not None and t["reason"].startswith("pruned"))
    # a new study starts from what would be trained otherwise (no champion yet: params.yaml)
    assert trials[0]["source"] == "params.yaml"
    assert trials[0]["params"] == {"train.lr": 0.002, "model.vae.latent_dim": 8}
    best = read_tune(project, "best_params.yaml")
    complete = [t for t in trials if t["state"] == "complete"]
    winner = min(complete, key=lambda t: t["value"])
    assert best["trial"] == winner["number"] and best["value"] == winner["value"]
    assert best["params"] == winner["params"]
    summary = read_tune(project, "summary.json")
    assert summary["best_value"] == winner["value"] and sum(summary["trials"].values()) == 4
    page = (project.root / "artifacts/tune/report.html").read_text()
    assert "Optimisation history" in page and "Parameter importances" in page and "Parallel" in page
    assert "<script src=" not in page and "cdn.plot.ly" not in page.replace("https://cdn.plot.ly", "")

    # nothing changed: DVC skips the stage; train.use_tuned changes `train`, so tune reruns, continues
    # the same study (its budget already spent: no new trial) and train applies the best values
    assert "didn't change" in project.run("dvc", "repro", "tune", check=True).stdout
    project.set_params(train={"use_tuned": True, "max_steps": 20})
    project.run("dvc", "repro", "train", check=True)
    assert read_tune(project, "trials.json") == trials
    record = json.loads((project.root / "artifacts/train/model/training.json").read_text())
    assert record["tuned"]["values"] == best["params"] and record["tuned"]["trial"] == best["trial"]
    assert record["params"]["train"]["lr"] == best["params"]["train.lr"]
    assert record["params"]["model"]["vae"]["latent_dim"] == best["params"]["model.vae.latent_dim"]
    status = project.run("genloop", "status", check=True).stdout
    assert f"Tuning: study {best['study']}" in status and "model.vae.latent_dim" in status
    assert studies_on_the_dashboard(project) == [best["study"]]


def studies_on_the_dashboard(project) -> list[str]:
    """Start `genloop tune dashboard` and ask its API which studies it shows."""
    import httpx

    port = free_port()
    cmd = [str(Path(sys.executable).parent / "genloop"), "tune", "dashboard", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=project.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=5)
                return [study["study_name"] for study in r.json()["study_summaries"]]
            except httpx.TransportError:
                time.sleep(0.3)
        pytest.fail("optuna-dashboard did not answer within 60 s")
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_a_new_study_starts_from_the_served_champions_values(digits_project):
    from tests.conftest import SMALL_BASELINE

    project = digits_project
    # a champion trained with other values than params.yaml now holds
    project.set_params(train={"lr": 0.004, "max_steps": 20}, model={"vae": {"latent_dim": 12}})
    project.set_params(evaluate=SMALL_BASELINE, tune={"enabled": False})
    project.run("dvc", "repro", "evaluate", check=True)
    version = json.loads((project.root / "artifacts/evaluate/decision.json").read_text())["challenger"]
    promote = f"from tasks.registry import champions; champions.promote({version!r}, 'test')"
    project.run("python", "-c", promote, check=True)
    project.set_params(
        train={"lr": 0.002}, model={"vae": {"latent_dim": 8}}, tune={"enabled": True, "n_trials": 1}
    )
    project.run("genloop", "stage", "tune", check=True)
    (first,) = read_tune(project, "trials.json")
    assert first["source"] == f"champion {version}"
    assert first["params"] == {"train.lr": 0.004, "model.vae.latent_dim": 12}


@pytest.mark.slow
def test_use_tuned_without_a_study_is_a_clear_error(digits):
    digits.set_params(model=SMALL_MODEL, train={**SMALL_TRAIN, "use_tuned": True, "max_steps": 10})
    proc = digits.run("dvc", "repro", "train")
    assert proc.returncode != 0
    assert "train.use_tuned is true but artifacts/tune/best_params.yaml holds no tuned values" in proc.stderr
    assert read_tune(digits, "summary.json") == {"enabled": False}  # the disabled stage ran, in no time
    assert not (digits.root / "artifacts/train/model").exists()


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)")
def test_the_report_draws_its_plots_with_no_network(digits_project):
    from playwright.sync_api import sync_playwright

    project = digits_project
    project.set_params(tune={"n_trials": 3, "max_steps": 30, "pruner": "none"})
    project.run("genloop", "stage", "tune", check=True)
    asked = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page()
        page.route("http*://**", lambda route: (asked.append(route.request.url), route.abort()))
        page.goto((project.root / "artifacts/tune/report.html").as_uri())
        page.wait_for_selector(".plotly .main-svg", timeout=30_000)
        drawn = page.locator(".js-plotly-plot").count()
        browser.close()
    assert drawn >= 3 and asked == []


@pytest.mark.parametrize(
    ("choice", "patience", "expected"),
    [
        ("median", 0, "MedianPruner"),
        ("percentile", 0, "PercentilePruner"),
        ("hyperband", 0, "HyperbandPruner"),
        ("none", 0, "NopPruner"),
        ("median", 3, "PatientPruner"),  # the GAN's noisy loss: a few epochs of grace first
    ],
)
def test_the_pruner_is_the_one_params_name(choice, patience, expected):
    from tasks.core.params import load, with_values
    from tasks.tuning.study import pruner

    params = with_values(load(REPO / "params.yaml"), {"tune.pruner": choice, "tune.patience": patience})
    assert type(pruner(params.tune)).__name__ == expected
