"""collect from S3 against a real SeaweedFS server on loopback."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest

from tasks import collect
from tasks.core import paths
from tasks.core.errors import GenloopError
from tasks.core.params import load
from tasks.ingest.s3 import _get_verified, client
from tests.conftest import REPO
from tests.s3_server import seaweedfs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as env:
        yield env


@pytest.fixture
def s3(s3_env, monkeypatch):
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    return client(load(REPO / "params.yaml").collect)


def make_bucket(s3, bucket: str) -> None:
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)


def upload_tree(s3, bucket: str, prefix: str, folder) -> dict[str, bytes]:
    make_bucket(s3, bucket)
    sent = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        body = path.read_bytes()
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=body, ChecksumAlgorithm="SHA256")
        sent[rel] = body
    return sent


def test_collect_from_s3_matches_the_uploaded_objects(project, s3, tmp_path):
    """1,797 digits under a prefix: more than one listing page (1,000 keys each)."""
    collect.run(project.params())
    local = project.snapshot("data/raw/files")
    sent = upload_tree(s3, "digits", "v1", project.root / "data/raw/files")
    s3.put_object(Bucket="digits", Key="v1/README.md", Body=b"not collected")
    s3.put_object(Bucket="digits", Key="v2/0/extra.png", Body=sent["0/0000.png"])  # other prefix

    project.set_params(data={"source": "s3://digits/v1"}, collect={"workers": 8})
    result = collect.run(project.params())
    assert result["files"] == len(sent) == 1797
    assert project.snapshot("data/raw/files") == local  # byte-identical to the originals
    manifest = json.loads(paths.MANIFEST.read_text())
    assert manifest["files"][0]["source"] == "s3://digits/v1/0/0000.png"
    assert result["labels"]["0"] == 178

    before = project.snapshot()
    collect.run(project.params())
    assert project.snapshot("data/raw") == {k[4:]: v for k, v in before.items() if k.startswith("raw/")}


def test_collect_from_s3_via_the_cli(project, s3, s3_env, text_folder):
    upload_tree(s3, "texts", "corpus", text_folder)
    project.set_params(data={"source": "s3://texts/corpus/"}, model={"family": "gpt"})
    proc = project.run("genloop", "stage", "collect", env=s3_env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files"] == 20
    assert "collect s3://texts/corpus/" in proc.stderr  # the progress bar


def test_corrupt_object_is_caught_by_its_etag(s3):
    s3.create_bucket(Bucket="corrupt")
    s3.put_object(Bucket="corrupt", Key="x/a.txt", Body=b"hello world")
    listed = s3.list_objects_v2(Bucket="corrupt", Prefix="x/")["Contents"][0]
    tampered = {**listed, "ETag": '"' + "0" * 32 + '"'}  # what a corrupted transfer would look like
    assert _get_verified(s3, "corrupt", listed, retries=1, timeout_s=10) == b"hello world"
    with pytest.raises(GenloopError, match=r"failed 2 time\(s\) in 20 s .*Corrupt: MD5 does not match"):
        _get_verified(s3, "corrupt", tampered, retries=2, timeout_s=10)


def test_only_a_broken_damaged_or_busy_transfer_is_read_again():
    """One retry layer: botocore does not retry a GET; our loop reads an object again when its
    transfer broke, arrived damaged, could not connect or S3 was busy, never on a refusal or a bug."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    from tasks.ingest.s3 import Corrupt, read_again

    def answer(code: str, status: int) -> ClientError:
        response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return ClientError(response, "GetObject")

    again = [
        Corrupt("MD5 does not match the ETag"),
        ResponseStreamingError(error="connection reset"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        ConnectionResetError(),
        answer("SlowDown", 503),
        answer("InternalError", 500),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ]
    not_again = [
        answer("AccessDenied", 403),
        answer("NoSuchKey", 404),
        ValueError("a bug"),
        KeyError("Body"),
    ]
    assert all(read_again(e) for e in again)
    assert not any(read_again(e) for e in not_again)


def test_a_bug_is_not_retried(s3, monkeypatch):
    """An error that is no transfer problem fails at once instead of sleeping through the retries."""
    import tasks.ingest.s3

    naps: list[float] = []
    monkeypatch.setattr(tasks.ingest.s3.time, "sleep", naps.append)
    s3.create_bucket(Bucket="buggy")
    s3.put_object(Bucket="buggy", Key="x/a.txt", Body=b"hello")
    listed = s3.list_objects_v2(Bucket="buggy", Prefix="x/")["Contents"][0]
    with pytest.raises(KeyError):  # a listing entry without its size: our bug, not the network's
        _get_verified(s3, "buggy", {k: v for k, v in listed.items() if k != "Size"}, retries=5, timeout_s=10)
    assert naps == []
    tampered = {**listed, "ETag": '"' + "0" * 32 + '"'}
    with pytest.raises(GenloopError):
        _get_verified(s3, "buggy", tampered, retries=3, timeout_s=10)
    assert naps == [0.5, 1.0]  # a damaged transfer is read again, with backoff (none after the last try)


@pytest.mark.parametrize("fault", ["hang", "trickle"])
def test_a_hanging_object_fails_by_its_deadline_with_one_retry_layer(monkeypatch, fault):
    """An endpoint whose GET never answers (or sends a byte now and then) is asked exactly `retries`
    times, not retries x botocore's attempts, and the object fails by (retries + 1) x timeout_s."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    gets, stop = [], threading.Event()

    class Stuck(BaseHTTPRequestHandler):
        def do_GET(self):
            gets.append(self.path)
            if fault == "trickle":  # headers at once, then a byte every 0.2 s: no read ever times out
                self.send_response(200)
                self.send_header("Content-Length", str(1 << 20))
                self.end_headers()
                while not stop.is_set():
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    stop.wait(0.2)
            stop.wait(60)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stuck)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    params = load(REPO / "params.yaml").collect.model_copy(update={"retries": 3, "timeout_s": 1.0})
    listed = {"Key": "x/a.png", "Size": 1 << 20, "ETag": '"' + "0" * 32 + '"'}
    started = time.monotonic()
    try:
        with pytest.raises(GenloopError, match=r"s3://b/x/a.png failed \d time\(s\) in 3 s"):
            _get_verified(client(params, retry=False), "b", listed, params.retries, params.timeout_s)
    finally:
        stop.set()
        server.shutdown()
    assert 1 <= len(gets) <= params.retries  # one retry layer: never retries x botocore's attempts
    assert time.monotonic() - started <= (params.retries + 1) * params.timeout_s + 2  # the deadline


@pytest.mark.parametrize("case", ["unreachable", "no-bucket", "empty-prefix", "bad-key"])
def test_s3_errors_are_clear_and_leave_data_alone(project, s3, s3_env, monkeypatch, case):
    collect.run(project.params())
    before = project.snapshot()
    make_bucket(s3, "emptyish")
    source = {"no-bucket": "s3://no-such-bucket/x", "empty-prefix": "s3://emptyish/nothing"}.get(
        case, "s3://emptyish/x"
    )
    if case == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    if case == "bad-key":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    project.set_params(data={"source": source}, collect={"retries": 2, "timeout_s": 2})
    expected = {
        "unreachable": "cannot reach the S3 endpoint",
        "no-bucket": "NoSuchBucket",
        "empty-prefix": "no .png or .txt",
        "bad-key": "S3 refused",
    }[case]
    with pytest.raises(GenloopError, match=expected):
        collect.run(project.params())
    assert project.snapshot() == before


def forward_later(port: int, target: int, after_s: float) -> threading.Event:
    """From `after_s` on, forward connections on 127.0.0.1:`port` to `target`: an S3 outage that ends."""
    import socket

    stop = threading.Event()

    def pipe(a, b) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        time.sleep(after_s)
        with socket.create_server(("127.0.0.1", port)) as server:
            server.settimeout(0.5)
            while not stop.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(("127.0.0.1", target))
                threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
                threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return stop


def test_a_flow_retries_the_stage_an_s3_outage_failed_and_nothing_else(project, s3, s3_env, monkeypatch,
                                                                      digit_folder):  # fmt: skip
    """The data flow's collect fails while S3 is unreachable; Prefect retries that task alone (one
    stage, `dvc repro --single-item`), and the flow completes once S3 is back."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    from flows.data import data
    from tests.conftest import free_port

    upload_tree(s3, "outage", "digits", digit_folder)
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # nothing listens yet
    project.set_params(
        data={"source": "s3://outage/digits"},
        collect={"retries": 1, "timeout_s": 2},
        validate={"image": {"labels": ["a", "b", "c"], "min_per_class": 20}},
    )
    stop = threading.Event()
    try:
        with prefect_test_harness(server_startup_timeout=120):
            # S3 is back 9 s in: after feedback (~3 s) and collect's first try, before its retry
            stop = forward_later(port, int(s3_env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]), after_s=9)
            state = data(return_state=True)  # collect's first try fails; its retry comes after 10 s
            assert state.is_completed(), state

            async def runs() -> dict[str, int]:
                async with get_client() as client:
                    return {r.name: r.run_count for r in await client.read_task_runs()}

            counts = asyncio.run(runs())
    finally:
        stop.set()
    by_stage = {name.split("-")[0]: n for name, n in counts.items() if not name.startswith("site")}
    assert by_stage == {"feedback": 1, "collect": 2, "validate": 1, "augment": 1}, counts
    assert all(n == 1 for name, n in counts.items() if name.startswith("site"))  # no site: nothing to retry
