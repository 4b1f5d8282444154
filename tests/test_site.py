"""State shared through the site's stores (site.remote on S3, site.database on PostgreSQL): two checkouts
in two folders, each with its own .genloop/, BentoML store and DVC cache, one SeaweedFS and one
PostgreSQL, as two machines of a team would have them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, copy_project, free_port, new_project
from tests.postgres_server import new_database, postgres
from tests.s3_server import seaweedfs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as env:
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
                     ).create_bucket(Bucket="team")  # fmt: skip
        yield env


@pytest.fixture(scope="module")
def postgres_server():
    with postgres() as url:
        yield url


@pytest.fixture(scope="module")
def prefect_api():
    """One Prefect server for every flow run of this module (Prefect's own test harness)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture
def site(s3_env, postgres_server, prefect_api, tmp_path) -> dict:
    """A fresh remote prefix and database for this test, and the environment every command gets."""
    remote = f"s3://team/{tmp_path.name}"
    env = {**s3_env, "PREFECT_API_URL": prefect_api}
    return {"remote": remote, "database": new_database(postgres_server), "env": env}


def checkout(root, template, site: dict):
    """A checkout of the project sharing the site: the quick model every test trains, a port of its own."""
    from tests.test_evaluate import LENIENT, SMALL_VAE
    from tests.test_train import QUICK

    project = copy_project(template, root) if template else new_project(root)
    project.env.update(site["env"])
    project.set_params(
        model=SMALL_VAE,
        train=QUICK | {"max_steps": 240, "steps_per_epoch": 40},
        evaluate=LENIENT,
        site={"remote": site["remote"], "database": site["database"]},
        serve={"port": free_port(), "ready_timeout_s": 120},
    )
    return project


def summary(project) -> dict:
    return json.loads((project.root / "artifacts/lifecycle/summary.json").read_text())


def weights(project, tag: str) -> str:
    from tasks.core.storage import sha256_file

    name, version = tag.split(":")
    return sha256_file(project.root / ".genloop/bentoml/models" / name / version / "model.safetensors")


def test_a_second_checkout_pulls_reruns_nothing_and_serves_the_same_weights(site, tmp_path, prepared_digits):
    a = checkout(tmp_path / "a", prepared_digits, site)
    b = checkout(tmp_path / "b", None, site)  # a fresh clone: no data, an empty DVC cache and store
    try:
        a.run("genloop", "flow", "lifecycle", check=True)
        first = summary(a)
        assert first["decision"] == "promote" and first["deploy"] == "deployed", first
        v1 = first["challenger"]

        out = b.run("genloop", "flow", "lifecycle", check=True)
        second = summary(b)
        assert set(second["stages"].values()) == {"unchanged"}, (second, out.stdout[-3000:])
        assert second["deployed"] == first["deployed"] and second["deploy"] == "deployed"
        assert weights(b, v1) == weights(a, v1)  # imported from the remote, checked against its sha256
        assert "took the pipeline's dvc.lock" in out.stdout + out.stderr
        status = b.run("genloop", "status", check=True).stdout
        assert site["remote"] in status and "postgresql://postgres@127.0.0.1" in status
        assert site["remote"] in (b.root / ".dvc/config.local").read_text()
        assert subprocess.run(["git", "diff", "--quiet", "--", ".dvc"], cwd=b.root).returncode == 0  # clean
    finally:
        a.run("genloop", "undeploy")
        b.run("genloop", "undeploy")


KILLED_EXPORT = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from tasks.core import objects
from tasks.registry import shared, store

real = objects.write
def write(url, data):
    if url.endswith(".json"):  # the archive is up, its manifest not yet: the worst moment
        os.kill(os.getpid(), signal.SIGKILL)
    real(url, data)
objects.write = write
shared.export("models", {tag!r})
"""


def test_a_kill_during_an_export_leaves_nothing_another_machine_sees(site, tmp_path, champion_digits):
    from tasks.core.storage import read_json

    a = copy_project(champion_digits, tmp_path / "a")
    a.env.update(site["env"] | {"GENLOOP_SITE_REMOTE": site["remote"]})
    tag = read_json(a.root / "artifacts/evaluate/decision.json")["challenger"]
    script = KILLED_EXPORT.format(repo=str(REPO), tag=tag)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=a.root,
                          env={**os.environ, **a.env}, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    listed = subprocess.run(
        [sys.executable, "-c", "from tasks.registry import shared; print(shared.exported('models'))"],
        cwd=REPO, env={**os.environ, **a.env, "BENTOML_HOME": str(tmp_path / "b")},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert listed.strip() == "[]"  # the archive is there, but without its manifest no machine sees it
    # B asks for the version: not found, rather than a half-finished copy
    asked = subprocess.run(
        [sys.executable, "-c", f"from tasks.registry import store; store.folder({tag!r})"],
        cwd=REPO, env={**os.environ, **a.env, "BENTOML_HOME": str(tmp_path / "b")},
        capture_output=True, text=True,
    )  # fmt: skip
    assert asked.returncode != 0 and "no model version" in asked.stderr
    # the next export finishes it, and then B gets it whole
    done = subprocess.run(
        [sys.executable, "-c", f"from tasks.registry import shared; print(shared.export('models', {tag!r}))"],
        cwd=a.root, env={**os.environ, **a.env}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "True"
    subprocess.run(
        [sys.executable, "-c", f"from tasks.registry import store; store.folder({tag!r})"],
        cwd=REPO, env={**os.environ, **a.env, "BENTOML_HOME": str(tmp_path / "b")}, check=True,
    )  # fmt: skip
