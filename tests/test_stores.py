"""A shared store that cannot be reached: the command that needs it fails within its timeout, in one line
naming the store and the setting, and leaves nothing local half-written."""

from __future__ import annotations

import pytest

from tasks.core.errors import GenloopError

NOWHERE = "http://127.0.0.1:9"  # nothing listens there: refused at once


@pytest.fixture
def no_s3(monkeypatch, tmp_path):
    from tasks.core import objects

    monkeypatch.chdir(tmp_path)
    for key, value in {"AWS_ENDPOINT_URL": NOWHERE, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(objects, "ATTEMPTS", 1)
    objects._client.cache_clear()
    yield tmp_path
    objects._client.cache_clear()


def test_an_unreachable_remote_stops_the_pull_before_it_changes_anything(no_s3):
    from tasks.core import remote

    (no_s3 / "dvc.lock").write_text("schema: '2.0'\n")
    with pytest.raises(GenloopError) as err:
        remote.pull("sklearn-digits-vae", "s3://team/genloop")
    message = str(err.value)
    assert "\n" not in message and "(site.remote)" in message and "s3://team/genloop/pipelines" in message
    assert (no_s3 / "dvc.lock").read_text() == "schema: '2.0'\n"  # as it was
    assert not (no_s3 / ".genloop").exists()


def test_an_unreachable_registry_names_the_setting_and_keeps_the_store_clean(no_s3, monkeypatch):
    from tasks.registry import shared

    monkeypatch.setenv("BENTOML_HOME", str(no_s3 / "store"))
    with pytest.raises(GenloopError) as err:
        shared.fetch("models", "genloop-x:v1", "s3://team/genloop")
    assert "\n" not in str(err.value) and "(site.remote)" in str(err.value)
    assert not (no_s3 / "store" / "models").exists()


def test_an_unreachable_database_is_one_line_naming_the_setting(monkeypatch, tmp_path):
    from tasks.monitoring.logs import open_logs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENLOOP_SITE_DATABASE", "postgresql://genloop@127.0.0.1:9/genloop")
    with pytest.raises(GenloopError) as err:
        open_logs([], tmp_path).samples("genloop-x")
    assert "\n" not in str(err.value)
    assert "site.database (postgresql://genloop@127.0.0.1:9/genloop)" in str(err.value)


@pytest.mark.slow
def test_a_stage_waits_for_the_lock_another_run_holds_in_the_same_checkout(project):
    """Two flow runs in one checkout: the second one's stage waits for DVC's lock instead of failing with
    "Unable to acquire lock" (which no retry would have cured)."""
    import subprocess
    import sys

    from tasks.core.orchestration import repro

    holder = subprocess.Popen(
        [sys.executable, "-c", "from dvc.repo import Repo; import time; r = Repo(); r.lock.lock(); "
         "print('held', flush=True); time.sleep(4); r.lock.unlock()"],
        cwd=project.root, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    repro("feedback")  # waits for the lock, then runs
    assert holder.wait() == 0
    assert (project.root / "data/feedback/manifest.json").is_file()
