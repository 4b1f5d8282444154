"""Deploys that keep serving and keep track, through real `bentoml serve` processes under load: no
failed request during a deploy, SIGTERM drains, a killed deploy is repaired, concurrent deploys leave
one recorded server, a stale record never signals another program, and a soak loses nothing."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time

import httpx
import psutil
import pytest

from tasks.serving.launch import HANDOVER_S
from tests.conftest import BIN
from tests.test_service import deployed_champion

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory, champion_digits):
    project = deployed_champion(
        champion_digits, tmp_path_factory.mktemp("deploy") / "project", {"max_concurrency": 64}
    )
    project.port = record(project)["port"]
    yield project
    project.run("genloop", "undeploy")


def record(project) -> dict:
    return json.loads((project.root / ".genloop/deploy/current.json").read_text())


def servers(port: int) -> list[int]:
    """Every genloop server process listening on `port`, whoever started it."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "tasks.serving.launch" in cmd and str(port) in cmd:
            found.append(proc.pid)
    return found


def post(path: str, body: dict) -> bytes:
    """One HTTP/1.1 request, as bytes to send on a socket of one's own."""
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data


class Load:
    """Clients sending /generate (and rating what they got) on fresh connections; a refused connection
    is retried once, as a client library would."""

    def __init__(self, url: str, clients: int, n: int = 1, feedback: bool = False) -> None:
        self.url, self.n, self.feedback = url, n, feedback
        self.stop = threading.Event()
        self.counts: collections.Counter = collections.Counter()
        self.errors: list[str] = []
        self.rated: list[tuple[str, int]] = []
        self.answered: list[str] = []  # request ids of the 200s
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _post(self, path: str, body: dict, retry: bool):
        for attempt in (0, 1):
            try:
                return httpx.post(self.url + path, json=body, timeout=60)
            except httpx.ConnectError as err:
                if attempt or not retry:
                    self.counts["refused"] += 1
                    self.errors.append(f"{path}: {err!r}")
                    return None
                time.sleep(0.05)
            except httpx.HTTPError as err:
                self.counts[type(err).__name__] += 1
                self.errors.append(f"{path}: {err!r}")
                return None
        return None

    def _client(self, i: int) -> None:
        while not self.stop.is_set():
            res = self._post("/generate", {"n": self.n}, retry=True)
            if res is None:
                continue
            self.counts[res.status_code] += 1
            if res.status_code == 200:
                self.answered.append(res.json()["request_id"])
            if res.status_code == 200 and self.feedback:
                sample = res.json()["samples"][0]["id"]
                rating = 1 + i % 5
                fb = self._post("/feedback", {"sample_id": sample, "rating": rating}, retry=True)
                if fb is not None:
                    self.counts[f"feedback {fb.status_code}"] += 1
                    if fb.status_code == 200:
                        self.rated.append((sample, rating))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)


def test_a_deploy_under_load_fails_no_request(site):
    before = record(site)
    with Load(site.url, clients=8) as load:
        time.sleep(2)
        proc = site.run("genloop", "deploy")
        time.sleep(2)
    assert proc.returncode == 0, proc.stderr
    after = record(site)
    assert after["pid"] != before["pid"] and after["server_id"] != before["server_id"]
    assert load.counts[200] > 50
    assert set(load.counts) == {200}, (dict(load.counts), load.errors[:5])
    assert not psutil.pid_exists(before["pid"])  # the old server drained and left
    assert servers(site.port) == [after["pid"]]


def test_a_killed_deploy_keeps_the_old_server_and_is_repaired(site):
    old = record(site)
    deploying = subprocess.Popen([str(BIN / "genloop"), "deploy"], cwd=site.root)
    starting = site.root / ".genloop/deploy/starting.json"
    deadline = time.monotonic() + 60
    while not (starting.is_file() and "pid" in json.loads(starting.read_text() or "{}")):
        assert deploying.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    deploying.send_signal(signal.SIGKILL)  # while it waits for the new server's /readyz
    deploying.wait()
    new = json.loads(starting.read_text())["pid"]
    assert httpx.get(site.url + "/version").status_code == 200  # the old one never stopped
    status = " ".join(site.run("genloop", "status", check=True).stdout.split())
    assert f"pid {old['pid']}" in status and "running" in status and "Unfinished deploy" in status
    site.run("genloop", "undeploy", check=True)  # repairs first: the orphan is stopped too
    for pid in (old["pid"], new):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert servers(site.port) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(site.url + "/readyz")
    log = [json.loads(line) for line in (site.root / ".genloop/deploy/log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log[-2:]] == ["reconcile", "undeploy"]
    site.run("genloop", "deploy", check=True)


def test_concurrent_deploys_end_with_the_one_recorded_server(site):
    procs = [subprocess.Popen([str(BIN / "genloop"), "deploy"], cwd=site.root, stderr=subprocess.PIPE)
             for _ in range(2)]  # fmt: skip
    for p in procs:
        assert p.wait(300) == 0, p.stderr.read().decode()
    assert servers(site.port) == [record(site)["pid"]]
    assert httpx.get(site.url + "/readyz").status_code == 200


def test_a_stale_record_never_signals_another_program(site):
    real = record(site)
    stranger = subprocess.Popen(["sleep", "600"])
    since = psutil.Process(stranger.pid).create_time()
    try:
        # the record's pid, since reused by another program (a different start time)
        stale = {**real, "pid": stranger.pid, "started": since + 1, "workers": [[stranger.pid, since + 1]]}
        (site.root / ".genloop/deploy/current.json").write_text(json.dumps(stale))
        status = " ".join(site.run("genloop", "status", check=True).stdout.split())
        assert "NOT RUNNING" in status
        proc = site.run("genloop", "undeploy", check=True)
        assert "was not running" in proc.stdout
        assert stranger.poll() is None  # untouched
    finally:
        stranger.kill()
        stranger.wait()
        (site.root / ".genloop/deploy/current.json").write_text(json.dumps(real))
    site.run("genloop", "deploy", check=True)  # replaces the real server, which the record names again
    assert servers(site.port) == [record(site)["pid"]]


def test_soak_loses_nothing_and_sigterm_drains(site):
    """A steady load with feedback for a while, then SIGTERM: no 5xx and no 504, every acknowledged
    rating stored, every answered request in the log (written off the request path, the rest at the
    shutdown), memory flat after warm-up, and the requests in flight at SIGTERM answered."""
    server = record(site)
    procs = [psutil.Process(server["pid"]), *psutil.Process(server["pid"]).children(recursive=True)]

    def rss() -> int:
        return sum(p.memory_info().rss for p in procs)

    with Load(site.url, clients=16, n=4, feedback=True) as load:
        time.sleep(15)  # warm-up
        warm = rss()
        time.sleep(30)
        steady = rss()
        late = socket.create_connection(("127.0.0.1", site.port))  # accepted before the stop, and
        os.kill(server["pid"], signal.SIGTERM)
        time.sleep(HANDOVER_S + 0.3)  # its request sent after the port was left: still read and answered
        late.sendall(post("/generate", {"n": 1}))
        try:
            late_answer = b"".join(iter(lambda: late.recv(65536), b""))
        except OSError as err:  # reset
            late_answer = repr(err).encode()
        late.close()
        psutil.Process(server["pid"]).wait(60)
        served_before_stop = load.counts[200]
    refused = load.counts.pop("refused", 0)  # after the listener closed: nothing serves any more
    assert served_before_stop > 100
    assert late_answer.startswith(b"HTTP/1.1 200"), late_answer[:200]
    assert all(not isinstance(k, int) or k == 200 for k in load.counts), dict(load.counts)
    assert not [k for k in load.counts if isinstance(k, str) and not k.startswith("feedback 200")], (
        dict(load.counts),
        load.errors[:5],
    )
    assert steady < warm * 1.25, (warm, steady)
    db = sqlite3.connect(site.root / ".genloop/serving/serving.db")
    stored = set(db.execute("SELECT sample_id, rating FROM feedback").fetchall())
    logged = {r for (r,) in db.execute("SELECT id FROM requests")}
    db.close()
    assert set(load.rated) <= stored  # no acknowledged rating lost
    assert set(load.answered) <= logged, len(set(load.answered) - logged)  # no answered request unlogged
    print(f"soak: {served_before_stop} answers, {len(load.rated)} ratings, rss {warm} -> {steady} bytes, "
          f"{refused} refused after the stop")  # fmt: skip
    site.run("genloop", "deploy", check=True)


def test_a_failed_evaluate_keeps_the_last_decision(site):
    decision = site.root / "artifacts/evaluate/decision.json"
    before = decision.read_text()
    description = site.root / "artifacts/train/model/model.json"
    good = description.read_text()
    description.write_text("{not json")  # evaluate will fail reading the model
    try:
        proc = site.run("dvc", "repro", "--single-item", "evaluate")
        assert proc.returncode != 0
        assert decision.read_text() == before  # the last decision stays (persist: true)
    finally:
        description.write_text(good)
