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
import time

import httpx
import psycopg
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


RECORD = "import json; from tasks.registry import champions; print(json.dumps(champions.record()[%r]))"


def served_model(project) -> str:
    """The model version the project's deployment serves (from its record, as `genloop status` has it)."""
    return json.loads((project.root / ".genloop/deploy/current.json").read_text())["model"]


def url_of(project) -> str:
    return json.loads((project.root / ".genloop/deploy/current.json").read_text())["url"]


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
        ran = {stage: what for stage, what in second["stages"].items() if what not in ("unchanged", "off")}
        assert not ran, (ran, out.stdout[-3000:])
        assert second["deployed"] == first["deployed"] and second["deploy"] == "deployed"
        assert weights(b, v1) == weights(a, v1)  # imported from the remote, checked against its sha256
        assert "took the pipeline's dvc.lock" in out.stdout + out.stderr
        status = b.run("genloop", "status", check=True).stdout
        assert site["remote"] in status and "postgresql://postgres@127.0.0.1" in status
        assert site["remote"] in (b.root / ".dvc/config.local").read_text()
        assert subprocess.run(["git", "diff", "--quiet", "--", ".dvc"], cwd=b.root).returncode == 0  # clean

        # both serve at once, one log: a sample made on A is rated on B, and B's monitor sees both
        a_url, b_url = url_of(a), url_of(b)
        made = httpx.post(a_url + "/generate", json={"n": 3, "seed": 1}, timeout=60).json()
        sample = made["samples"][0]["id"]
        rated = httpx.post(b_url + "/feedback", json={"sample_id": sample, "rating": 5}, timeout=60)
        assert rated.status_code == 200, rated.text
        other = httpx.post(b_url + "/generate", json={"n": 2, "seed": 2}, timeout=60).json()
        with psycopg.connect(site["database"]) as conn:
            stored = conn.execute("SELECT COUNT(*) FROM genloop_log.feedback WHERE sample_id = %s", (sample,))
            assert stored.fetchone()[0] == 1
            for _ in range(50):  # the log is group-committed off the request path, within 50 ms
                served = conn.execute("SELECT request_id FROM genloop_log.samples").fetchall()
                if {made["request_id"], other["request_id"]} <= {r[0] for r in served}:
                    break  # both replicas' requests, in one table
                time.sleep(0.1)
            else:
                pytest.fail(f"B's request never reached the shared log: {served}")
        assert not (b.root / ".genloop/serving/serving.db").exists()  # nothing kept apart on B
        b.run("genloop", "flow", "monitor", check=True)
        history = (b.root / "artifacts/monitor/history.jsonl").read_text().splitlines()
        assert json.loads(history[-1])["samples"] == len(served)  # every replica's, in one window

        # A promotes v2 (trained longer); B's next deploy serves it. A rolls back; B's next deploy
        # serves the restored v1: one champion record, whichever machine changed it
        a.set_params(train={"max_steps": 480})
        a.run("genloop", "flow", "lifecycle", check=True)
        third = summary(a)
        assert third["decision"] == "promote" and third["challenger"] != v1, third
        v2 = third["challenger"]
        b.run("genloop", "deploy", check=True)
        assert served_model(b) == v2
        a.run("genloop", "rollback", check=True)
        assert served_model(a) == v1
        b.run("genloop", "deploy", check=True)
        assert served_model(b) == v1
        record = json.loads(b.run("python", "-c", RECORD % v1.split(":")[0], check=True).stdout)
        events = [(e["event"], e["tag"]) for e in record["history"]]
        assert events == [("promote", v1), ("promote", v2), ("rollback", v1)]
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


def test_two_replicas_write_one_log_and_the_readers_see_it_whole(postgres_server, monkeypatch):
    """The service's store on site.database: a sample logged by one replica is known to another (a
    rating sent there is stored once), and the monitor's reader and the usage figures see both."""
    import numpy as np

    from service.shared_store import SharedStore
    from service.store import usage_of
    from tasks.monitoring.logs import DatabaseLogs, open_logs

    url = new_database(postgres_server)
    a, b = SharedStore(url), SharedStore(url)  # two replicas (the second finds the schema made)
    rows = [{"id": f"r1-{i}", "label": "3", "asked": True, "stats": [0.5, 1.0],
             "embedding": np.ones(4, np.float32)} for i in range(2)]  # fmt: skip
    a.log_request("r1", "genloop-x:v1", {"n": 2, "seed": 7, "label": "3"}, 3.0, rows)
    a.flush()  # the group commit, as 50 ms after the answer
    assert b.known_sample("r1-1") and not b.known_sample("r1-2") and not b.known_sample("r9-0")
    b.add_feedback("r1-1", 4, "nice", "genloop-x:v1")
    b.log_request("r2", "genloop-x:v1", {"n": 1, "seed": 8}, 2.0, [rows[0] | {"id": "r2-0"}])
    a.close()
    b.close()  # what was queued is written at shutdown
    monkeypatch.setenv("GENLOOP_SITE_DATABASE", url)
    log = open_logs([], None)
    assert isinstance(log, DatabaseLogs)
    served = log.samples("genloop-x")
    assert sorted(s["id"] for s in served) == ["r1-0", "r1-1", "r2-0"]
    assert np.frombuffer(served[0]["embedding"], np.float32).tolist() == [1.0] * 4
    (rating,) = log.rated("genloop-x")
    assert (rating["sample_id"], rating["rating"], rating["seed"], rating["position"]) == ("r1-1", 4, 7, 1)
    assert log.samples("genloop-y") == [] and log.rated("genloop-") != []  # a line is a range of tags
    use = usage_of(log._query)
    assert (use["requests"], use["samples"], use["ratings"]) == (2, 3, 1)
    assert use["per_model"]["genloop-x:v1"]["mean_rating"] == 4.0


def test_a_laptops_history_moves_to_the_site_and_another_machine_sees_it(site, tmp_path, champion_digits):
    """`genloop site migrate` on a project that started on one machine: its versions, champion record,
    service log and stage outputs; run twice, nothing is copied twice."""
    import numpy as np

    from service.store import Store
    from tasks.core.storage import read_json

    laptop = copy_project(champion_digits, tmp_path / "laptop")
    laptop.env.update(site["env"])
    tag = read_json(laptop.root / "artifacts/evaluate/decision.json")["challenger"]
    log = Store(folder=laptop.root / ".genloop/serving")
    served = [{"id": "r1-0", "stats": [1.0], "embedding": np.ones(2)}]
    log.log_request("r1", tag, {"n": 1, "seed": 3}, 2.0, served)
    log.add_feedback("r1-0", 5, "kept", tag)
    log.close()
    laptop.set_params(site={"remote": site["remote"], "database": site["database"]})
    out = laptop.run("genloop", "site", "migrate", check=True).stdout
    assert "1 version(s)" in out and "1 line(s) moved" in out and "1 feedback" in out, out
    again = laptop.run("genloop", "site", "migrate", check=True).stdout
    assert "0 version(s)" in again and "0 line(s) moved" in again  # already there: kept as it was
    assert "0 requests, 0 samples, 0 feedback" in again

    other = new_project(tmp_path / "other")
    other.env.update(site["env"])
    other.set_params(site={"remote": site["remote"], "database": site["database"]})
    record = json.loads(other.run("python", "-c", RECORD % tag.split(":")[0], check=True).stdout)
    assert record["champion"] == tag
    fetched = other.run("python", "-c", f"from tasks.registry import store; print(store.folder({tag!r}))")
    assert fetched.returncode == 0 and str(other.root) in fetched.stdout, fetched.stderr
    assert weights(other, tag) == weights(laptop, tag)
    with psycopg.connect(site["database"]) as conn:
        tables = ("requests", "feedback")
        counts = [conn.execute(f"SELECT COUNT(*) FROM genloop_log.{t}").fetchone()[0] for t in tables]
    assert counts == [1, 1]
    assert shared_lock(site["remote"], laptop) == (laptop.root / "dvc.lock").read_bytes()


def shared_lock(remote: str, project) -> bytes | None:
    """The dvc.lock of the project's line in the remote, as another checkout would take it."""
    code = (
        "import sys; from tasks.core import objects, site; from tasks.core.params import line, load; "
        f"sys.stdout.buffer.write(objects.read(site.join({remote!r}, 'pipelines', line(load()), 'dvc.lock')))"
    )
    return project.run("python", "-c", code, check=True).stdout.encode()
