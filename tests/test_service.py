"""The service over real HTTP: a Bento packaged from a real champion, run by `genloop deploy` (bentoml
serve), called with httpx, BentoML's own client and headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import copy_project, free_port, undeclared_params

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
LINE = "genloop-sklearn-digits-vae"  # the registry's name of the line: data.source and model.family


def deployed_champion(template: Path, root: Path, serve: dict, env: dict | None = None, **params):
    """A copy of `template` (conftest's `champion_digits`), its champion packaged and deployed."""
    project = copy_project(template, root)
    project.set_params(serve={"port": free_port(), "ready_timeout_s": 90} | serve, **params)
    project.run("dvc", "repro", "package", check=True, env=env)
    project.run("genloop", "deploy", check=True)
    project.url = json.loads((project.root / ".genloop/deploy/current.json").read_text())["url"]
    return project


@pytest.fixture(scope="module")
def site(tmp_path_factory, champion_digits):
    """A project with a champion VAE, packaged and deployed; undeployed at the end."""
    root = tmp_path_factory.mktemp("service")
    log = root / "params-read.jsonl"
    project = deployed_champion(
        champion_digits, root / "project", {"max_concurrency": 2}, env={"GENLOOP_PARAMS_LOG": str(log)}
    )
    assert undeclared_params(log) == {}  # package with a champion reads serve and package: both listed
    yield project
    project.run("genloop", "undeploy")


def feedback_rows(project) -> list[tuple]:
    db = sqlite3.connect(project.root / ".genloop/serving/serving.db")
    try:
        return db.execute("SELECT sample_id, rating, comment FROM feedback").fetchall()
    finally:
        db.close()


def test_routes(site):
    import bentoml
    from PIL import Image

    assert httpx.get(site.url + "/readyz").status_code == 200
    version = httpx.get(site.url + "/version").json()
    assert version["model"].startswith(f"{LINE}:") and version["lineage"]["source"] == "sklearn:digits"
    assert version["lineage"]["dvc"]["data/processed"]

    with bentoml.SyncHTTPClient(site.url) as client:  # BentoML's own client
        out = client.generate(n=3, seed=5, label="7")
    assert len(out["samples"]) == 3
    png = Image.open(io.BytesIO(base64.b64decode(out["samples"][0]["image"])))
    assert png.format == "PNG" and png.size[0] >= 8
    again = httpx.post(site.url + "/generate", json={"n": 3, "seed": 5, "label": "7"}).json()
    assert [s["image"] for s in again["samples"]] == [s["image"] for s in out["samples"]]  # seeded

    sample = out["samples"][0]["id"]
    r = httpx.post(site.url + "/feedback", json={"sample_id": sample, "rating": 4, "comment": "a fine 7"})
    assert r.status_code == 200 and r.json()["stored"] is True
    assert (sample, 4, "a fine 7") in feedback_rows(site)
    padded = sample.replace("-0", "-00")  # the same index written another way is not another sample
    r = httpx.post(site.url + "/feedback", json={"sample_id": padded, "rating": 4})
    assert r.status_code == 400 and "sample_id" in r.json()["error"]
    assert (site.root / ".genloop/serving/serving.db").stat().st_mode & 0o777 == 0o600

    db = sqlite3.connect(site.root / ".genloop/serving/serving.db")
    logged = db.execute("SELECT n, seed, label, sample_ids FROM requests WHERE seed = 5").fetchall()
    rows = db.execute(
        "SELECT id, seed, position, n, label, stats, embedding FROM samples WHERE seed = 5"
    ).fetchall()
    unseeded = httpx.post(site.url + "/generate", json={"n": 2}).json()
    for _ in range(40):  # the log is written off the request path, a group every 50 ms
        drawn = db.execute(
            "SELECT seed, label FROM samples WHERE request_id = ?", (unseeded["request_id"],)
        ).fetchall()
        if drawn:
            break
        time.sleep(0.05)
    db.close()
    assert len(logged) == 2 and logged[0][:3] == (3, 5, "7") and sample in logged[0][3] + logged[1][3]
    # a row per sample, for the drift monitor: seed, position, class, its statistics and embedding
    assert len(rows) == 6 and sample in {r[0] for r in rows}
    assert {r[1:5] for r in rows} == {(5, i, 3, "7") for i in range(3)}
    assert len(json.loads(rows[0][5])) == 3 and len(rows[0][6]) % 4 == 0 and len(rows[0][6]) > 0
    # a request without a seed gets one drawn, returned and logged: its samples can be made again
    assert isinstance(unseeded["seed"], int) and drawn == [(unseeded["seed"], "0"), (unseeded["seed"], "1")]
    again = httpx.post(site.url + "/generate", json={"n": 2, "seed": unseeded["seed"]}).json()
    assert [s["image"] for s in again["samples"]] == [s["image"] for s in unseeded["samples"]]

    metrics = httpx.get(site.url + "/metrics")
    assert metrics.status_code == 200 and "bentoml_" in metrics.text
    assert httpx.get(site.url + "/ui").status_code == 200


def test_status_shows_what_is_served_and_how_it_is_used(site):
    import re

    out = " ".join(site.run("genloop", "status", check=True).stdout.split())
    sample = httpx.post(site.url + "/generate", json={"n": 2}).json()["samples"][0]["id"]
    httpx.post(site.url + "/feedback", json={"sample_id": sample, "rating": 5})
    after = " ".join(site.run("genloop", "status", check=True).stdout.split())
    before = re.search(r"Service use \(\S+\): (\d+) requests \((\d+) in the last 24 h\)", out)
    used = r"Service use \(\S+\): (\d+) requests \((\d+) in the last 24 h\), (\d+) samples; (\d+) ratings"
    now = re.search(used, after)
    assert before and now and int(now[1]) == int(before[1]) + 1 and int(now[2]) == int(before[2]) + 1
    assert int(now[4]) >= 1 and "Warning" not in after  # the champion is what is served


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"n": 0}, 400, "greater than or equal to 1"),
        ({"n": 10_000}, 400, "less than or equal to"),
        ({"n": "two"}, 400, "valid integer"),
        ({"n": True}, 400, "valid integer"),  # strict: no bool, no numeric string
        ({"n": "3"}, 400, "valid integer"),
        ({"n": 1, "label": "dragon"}, 400, "unknown label 'dragon'"),
        ({"n": 1, "prompt": "hello"}, 400, "send `label`, not `prompt`"),
        ({"n": 1, "colour": "red"}, 400, "Extra inputs are not permitted"),
    ],
)
def test_bad_generate_requests_get_400_with_the_reason(site, body, status, reason):
    r = httpx.post(site.url + "/generate", json=body)
    assert r.status_code == status and reason in r.json()["error"], r.text
    assert set(r.json()) == {"error"} and "pydantic.dev" not in r.text  # one shape, one line, no links


@pytest.mark.parametrize("route", ["/generate", "/feedback"])
@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "text/plain",
        "",
    ],
)
def test_bodies_that_are_not_json_get_415_not_500(site, route, content_type):
    r = httpx.post(site.url + route, content=b"n=1", headers={"content-type": content_type})
    assert r.status_code == 415 and "Content-Type: application/json" in r.json()["error"], r.text
    assert httpx.get(site.url + route).json() == {"error": "Method Not Allowed"}
    assert httpx.get(site.url + "/no-such-page").json() == {"error": "Not Found"}
    assert httpx.post(site.url + "/version").json() == {"error": "Method Not Allowed"}


def test_fuzzing_the_api_finds_no_5xx_and_no_schema_mismatch(site, tmp_path):
    """schemathesis drives both routes from the OpenAPI document (its examples, boundaries, fuzzing and
    a stateful phase that rates the samples it was given): no 5xx, no answer outside the document, and no
    valid request refused or invalid one accepted (warnings fail the run)."""
    import re
    import subprocess
    import sys

    (tmp_path / "schemathesis.toml").write_text("[warnings]\nfail-on = true\n")
    command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{site.url}/docs.json"]
    command += ["--include-path-regex", "^/(generate|feedback)$", "--checks", "all", "--max-examples", "400"]
    command += ["--seed", "1", "--generation-database", "none", "--workers", "1"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    generated = int(re.search(r"(\d+) generated", proc.stdout).group(1))
    assert generated >= 1000 and "No issues found" in proc.stdout


def test_malformed_oversize_and_unknown_feedback(site):
    r = httpx.post(site.url + "/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Invalid JSON" in r.text
    r = httpx.post(site.url + "/generate", json={"n": 1, "label": "x" * 200_000})
    assert r.status_code == 413 and "request body over" in r.text
    r = httpx.post(site.url + "/feedback", json={"sample_id": "0" * 32 + "-0", "rating": 3})
    assert r.status_code == 404 and "unknown sample id" in r.json()["error"]
    r = httpx.post(site.url + "/feedback", json={"sample_id": "never-made", "rating": 3})
    assert r.status_code == 400 and "sample_id: String should match pattern" in r.json()["error"]
    r = httpx.post(site.url + "/feedback", json={"sample_id": "x", "rating": 9})
    assert r.status_code == 400 and "rating: Input should be less than or equal to 5" in r.json()["error"]
    r = httpx.post(site.url + "/feedback", json={"sample_id": "0" * 32 + "-01", "rating": 3})
    assert r.status_code == 400 and "sample_id" in r.json()["error"]  # one spelling: -1, never -01
    r = httpx.post(site.url + "/feedback", json={"sample_id": "0" * 32 + "-0", "rating": 3, "stars": 5})
    assert r.status_code == 400 and "Extra inputs are not permitted" in r.json()["error"]


def test_slow_bodies_hold_no_slot_and_abuse_gets_4xx_in_one_log_line(site):
    """Clients trickling their bodies in hold no concurrency slot (the site allows 2); a chunked body
    over the limit gets 413; an odd sample id 400; and each 4xx is one line in the log."""
    import socket

    host, port = site.url.removeprefix("http://").split(":")
    slow = []
    for _ in range(8):  # more than max_concurrency, each sending one byte now and then
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{")  # fmt: skip
        slow.append(s)
    try:
        for _ in range(5):
            for s in slow:
                s.sendall(b" ")
            assert httpx.post(site.url + "/generate", json={"n": 1}).status_code == 200
    finally:
        for s in slow:
            s.close()

    def chunks():
        for _ in range(100):
            yield b" " * 1024  # no Content-Length: 100 KiB, chunked, over max_body_bytes

    r = httpx.post(site.url + "/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "request body over" in r.json()["error"]
    sample = httpx.post(site.url + "/generate", json={"n": 1}).json()["samples"][0]["id"]
    r = httpx.post(
        site.url + "/feedback", json={"sample_id": sample.rsplit("-", 1)[0] + "-\u00b2", "rating": 3}
    )
    assert r.status_code == 400 and "sample_id" in r.json()["error"]
    log = Path(json.loads((site.root / ".genloop/deploy/current.json").read_text())["log"])
    time.sleep(1)
    text = (site.root / log).read_text()
    assert "client error: sample_id: String should match pattern" in text
    assert "Traceback" not in text.split("client error: sample_id")[-1]


def test_overload_gets_429_while_readyz_answers(site):
    def ask(_):
        return httpx.post(site.url + "/generate", json={"n": 16}, timeout=60).status_code

    with ThreadPoolExecutor(24) as pool:
        pending = pool.map(ask, range(48))
        ready = httpx.get(site.url + "/readyz").status_code
        codes = list(pending)
    assert ready == 200
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes  # never 5xx


def test_api_key(site):
    import bentoml

    site.set_params(serve={"docs": False})  # private use: no API docs page
    site.run("genloop", "stage", "package", check=True)
    site.run("genloop", "deploy", check=True, env={"GENLOOP_API_KEY": "s3cret-key"})
    try:
        key = {"authorization": "Bearer s3cret-key"}
        assert httpx.get(site.url + "/", headers=key).status_code == 404
        assert httpx.get(site.url + "/readyz").status_code == 200  # health stays open
        assert httpx.get(site.url + "/ui").status_code == 200  # the page itself, without the key
        for path in ("/version", "/metrics"):
            assert httpx.get(site.url + path).status_code == 401
        r = httpx.post(site.url + "/generate", json={"n": 1})
        assert r.status_code == 401 and "API key" in r.text
        bad = {"authorization": "Bearer s3cret-kez"}
        assert httpx.post(site.url + "/generate", json={"n": 1}, headers=bad).status_code == 401
        with bentoml.SyncHTTPClient(site.url, token="s3cret-key") as client:
            assert len(client.generate(n=2)["samples"]) == 2
    finally:  # back to no key, docs on, for the other tests
        site.set_params(serve={"docs": True})
        site.run("genloop", "stage", "package", check=True)
        site.run("genloop", "deploy", check=True)
    assert httpx.get(site.url + "/").status_code == 200
    assert httpx.post(site.url + "/generate", json={"n": 1}).status_code == 200


def test_a_bento_for_a_cluster_serves_from_an_empty_home_and_its_manifests_load(site, tmp_path):
    """`genloop package --cluster`: the image recipe and manifests; the Bento, exported and imported into
    an empty BENTOML_HOME in an empty folder (as the image holds it), serves as its entrypoint would."""
    import subprocess

    import yaml

    from tests.conftest import BIN
    from tests.test_cluster import loaded

    out = tmp_path / "cluster"
    made = site.run(
        "genloop", "package", "--cluster", str(out), env={"GENLOOP_API_KEY": "k-cluster"}, check=True
    )
    tag = json.loads((site.root / "artifacts/package/bento.json").read_text())["bento"]
    assert f"bento {tag}" in made.stdout and "kubectl apply" in made.stdout
    docs = [loaded(d) for d in yaml.safe_load_all((out / "kubernetes.yaml").read_text())]
    assert docs[0].spec.template.spec.containers[0].image == f"genloop:{tag.split(':')[1]}"
    assert loaded(yaml.safe_load((out / "secret.yaml").read_text())).string_data["api-key"] == "k-cluster"
    assert (out / "secret.yaml").stat().st_mode & 0o077 == 0  # the key: readable by its owner alone
    assert "bentoml" in (out / "Containerfile").read_text()
    without = site.run(
        "genloop", "package", "--cluster", str(tmp_path / "again"), env={"GENLOOP_API_KEY": ""}
    )
    assert without.returncode == 1 and "GENLOOP_API_KEY" in without.stderr

    archive = tmp_path / "genloop.bento"
    store = {"BENTOML_HOME": str(site.root / ".genloop/bentoml")}
    site.run("bentoml", "export", tag, str(archive), env=store, check=True)
    empty, port = tmp_path / "empty", free_port()
    empty.mkdir()
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "GENLOOP_API_KEY": "k-cluster"}
    subprocess.run([str(BIN / "bentoml"), "import", str(archive)], cwd=empty, env=env, check=True)
    serve = [str(BIN / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(serve, cwd=empty, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the imported Bento did not start"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        key = {"authorization": "Bearer k-cluster"}
        r = httpx.post(url + "/generate", json={"n": 1, "seed": 0}, headers=key, timeout=60)
        assert r.status_code == 200 and len(r.json()["samples"]) == 1, r.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert not list(empty.iterdir())  # it needed nothing from a project folder, and wrote nothing there


def test_feedback_survives_a_kill_right_after_the_answer(site):
    sample = httpx.post(site.url + "/generate", json={"n": 1}).json()["samples"][0]["id"]
    r = httpx.post(site.url + "/feedback", json={"sample_id": sample, "rating": 2})
    assert r.status_code == 200
    record = json.loads((site.root / ".genloop/deploy/current.json").read_text())
    assert record["workers"]
    for pid in [record["pid"], *(w[0] for w in record["workers"])]:  # the server and workers: no clean stop
        os.kill(pid, signal.SIGKILL)
    assert (sample, 2, "") in feedback_rows(site)
    site.run("genloop", "deploy", check=True)  # serving again
    assert (sample, 2, "") in feedback_rows(site)
    assert httpx.get(site.url + "/readyz").status_code == 200


def test_a_broken_bento_is_rolled_back(site):
    bentos = site.root / ".genloop/bentoml/bentos/genloop"
    good = json.loads((site.root / ".genloop/deploy/current.json").read_text())["bento"]
    broken = bentos / "broken"
    shutil.copytree(bentos / good.split(":")[1], broken)
    spec = (broken / "bento.yaml").read_text()
    spec = spec.replace(f"version: {good.split(':')[1]}", "version: broken").replace(
        "max_samples: 16", "max_samples: 0"
    )  # an invalid setting: the service cannot start
    (broken / "bento.yaml").write_text(spec)
    relist(broken)  # whole, as far as its file list goes: it fails only when it starts
    proc = site.run("genloop", "deploy", "--bento", "genloop:nosuch")
    assert proc.returncode == 1 and "no Bento 'genloop:nosuch'" in proc.stderr and good in proc.stderr
    assert "bentoml pull" not in proc.stderr
    proc = site.run("genloop", "deploy", "--bento", "genloop:broken")
    assert proc.returncode == 1 and f"kept {good} serving" in proc.stderr
    assert httpx.post(site.url + "/generate", json={"n": 1}).status_code == 200
    log = [json.loads(line) for line in (site.root / ".genloop/deploy/log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "deploy failed"  # started beside the good one, which never stopped
    status = site.run("genloop", "status", check=True).stdout
    assert good in status and "deploy failed" in status and site.url in status


def relist(bento: Path) -> None:
    from tasks.core.storage import write_json
    from tasks.registry.bentos import FILES, _listing

    write_json(bento / FILES, _listing(bento))


def test_only_the_service_port_listens_on_tcp(site):
    """BentoML's process manager (circus) takes commands on a control endpoint with no authentication;
    a deployment keeps it on Unix sockets in a private folder, so the service port is all there is."""
    import psutil

    record = json.loads((site.root / ".genloop/deploy/current.json").read_text())
    server = psutil.Process(record["pid"])
    tcp, unix = set(), set()
    for proc in [server, *server.children(recursive=True)]:
        tcp |= {c.laddr.port for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        unix |= {c.laddr for c in proc.net_connections("unix") if c.laddr}
    assert tcp == {record["port"]}
    control = [Path(u) for u in unix if Path(u).name == "control"]
    assert control and all(p.parent.stat().st_mode & 0o077 == 0 for p in control)  # 0700: ours alone


def test_a_damaged_model_or_incomplete_bento_is_refused_and_repaired(site):
    record = json.loads((site.root / ".genloop/deploy/current.json").read_text())
    good, model = record["bento"], record["model"]
    bentos = site.root / ".genloop/bentoml/bentos/genloop"
    partial = bentos / "partial"  # a copy killed early: bento.yaml and part of its source
    shutil.copytree(bentos / good.split(":")[1], partial)
    (partial / "bento.yaml").write_text(
        (partial / "bento.yaml").read_text().replace(good.split(":")[1], "partial")
    )
    (partial / "src/service/service.py").unlink()
    proc = site.run("genloop", "deploy", "--bento", "genloop:partial")
    assert proc.returncode == 1 and "incomplete: src/service/service.py is missing" in proc.stderr
    assert httpx.get(site.url + "/version").json()["model"] == model  # still serving, untouched

    weights = site.root / ".genloop/bentoml/models" / model.replace(":", "/") / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-1648])  # what a kill during registration used to leave
    for args in (("deploy",), ("stage", "package")):
        proc = site.run("genloop", *args)
        assert proc.returncode == 1 and f"model version {model} is damaged" in proc.stderr, args
    assert httpx.get(site.url + "/version").json()["model"] == model
    site.run("genloop", "stage", "evaluate", check=True)  # registers the version again, whole
    assert weights.read_bytes() == whole
    site.run("genloop", "deploy", check=True)
    assert httpx.get(site.url + "/version").json()["model"] == model


def test_rollback_returns_to_the_previous_champion(site):
    first = json.loads((site.root / ".genloop/deploy/current.json").read_text())["model"]
    site.set_params(train={"seed": 11})
    site.run("dvc", "repro", "evaluate", check=True)
    second = json.loads((site.root / "artifacts/evaluate/decision.json").read_text())["challenger"]
    assert second != first
    # make the new version champion whatever the gate said, then deploy it
    site.run(
        "python",
        "-c",
        f"from tasks.registry import champions; champions.promote({second!r}, 'test')",
        check=True,
    )
    status = " ".join(site.run("genloop", "status", check=True).stdout.split())
    assert f"Warning: the service serves {first}, but the champion of {LINE} is {second}" in status
    site.run("genloop", "stage", "package", check=True)
    site.run("genloop", "deploy", check=True)
    assert httpx.get(site.url + "/version").json()["model"] == second
    proc = site.run("genloop", "rollback", check=True)
    assert first in proc.stdout
    assert httpx.get(site.url + "/version").json()["model"] == first
    record = json.loads((site.root / ".genloop/bentoml/genloop-aliases.json").read_text())[LINE]
    assert record["champion"] == first and record["history"][-1]["event"] == "rollback"
    assert second in record["demoted"]

    # the rollback sticks: whatever the user runs next serves the restored champion
    site.run("genloop", "deploy", check=True)
    assert httpx.get(site.url + "/version").json()["model"] == first
    site.run("genloop", "flow", "deploy", check=True)
    assert httpx.get(site.url + "/version").json()["model"] == first
    site.run("dvc", "repro", check=True)
    site.run("genloop", "deploy", check=True)
    assert httpx.get(site.url + "/version").json()["model"] == first
    # evaluating the demoted model again does not promote it back
    proc = site.run("genloop", "stage", "evaluate", check=True)
    decision = json.loads((site.root / "artifacts/evaluate/decision.json").read_text())
    assert decision["challenger"] == second and decision["decision"] == "reject"
    assert decision["reasons"][0].startswith("not rolled back: a rollback demoted this version")
    site.run("genloop", "flow", "deploy", check=True)
    assert httpx.get(site.url + "/version").json()["model"] == first


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)")
def test_web_page_generates_and_rates_in_a_browser(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            external = []
            page.on(
                "request", lambda req: external.append(req.url) if not req.url.startswith(site.url) else None
            )
            page.goto(site.url + "/ui")
            page.wait_for_selector("#label option[value='3']", state="attached")
            assert page.is_visible("#label") and not page.is_visible("#prompt")  # an image model's form
            page.select_option("#label", "3")
            page.fill("#n", "4")
            page.click("#generate")
            page.wait_for_selector(".sample img")
            assert page.locator(".sample img").count() == 4
            first = page.locator(".sample").first
            sample_id = first.get_attribute("data-id")
            first.locator("button[data-rating='5']").click()
            page.wait_for_selector(".sample .thanks")
        finally:
            browser.close()
    assert (sample_id, 5, "") in feedback_rows(site)
    assert external == []  # no third-party script or font on our page


def test_deploy_flow_packages_and_deploys(site):
    proc = site.run("genloop", "flow", "deploy", check=True)
    record = json.loads((site.root / ".genloop/deploy/current.json").read_text())
    assert record["bento"] in proc.stdout
    assert httpx.get(site.url + "/version").json()["model"] == record["model"]
