"""The managed `bentoml serve` process of a deployment: start, health-check, smoke-test, stop.

A served Bento is one process group (its own session, so it outlives the command that started it) with
BentoML's workers under it; its output goes to a log file in .genloop/deploy/.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

from tasks.core import paths
from tasks.registry import store

DEPLOY = paths.STATE / "deploy"
SERVING = paths.STATE / "serving"  # feedback and request log (service/store.py)


_children: dict[int, subprocess.Popen] = {}  # servers started by this process: poll() reaps them


def alive(pid: int) -> bool:
    if pid in _children:
        return _children[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def port_free(host: str, port: int, wait_s: float = 20.0) -> bool:
    """Wait until nothing listens on the port, so /readyz can only be answered by the new server."""
    import socket

    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
        time.sleep(0.2)


def start(bento: str, host: str, port: int) -> dict:
    store.home()
    DEPLOY.mkdir(parents=True, exist_ok=True)
    log_path = DEPLOY / f"{bento.replace(':', '-')}.log"
    env = {**os.environ, "GENLOOP_SERVING_DIR": str(SERVING.resolve()), "BENTOML_DO_NOT_TRACK": "true"}
    launch = [sys.executable, "-m", "tasks.serving.launch"]  # bentoml serve, no control port on TCP
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*launch, "serve", bento, "--host", host, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopped as a whole, outlives this command
        )
    _children[proc.pid] = proc
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    return {"bento": bento, "pid": proc.pid, "url": url, "host": host, "port": port, "log": str(log_path)}


def workers(pid: int) -> list[int]:
    """BentoML's worker processes under a server (each in its own session, so not in its group)."""
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop(pid: int, known_workers: list[int] | None = None, grace_s: float = 20.0) -> None:
    """SIGTERM to the server, which stops its workers cleanly; SIGKILL after a grace. Workers left
    behind by a server that was killed outright are stopped directly (they would still hold the port)."""
    import psutil

    procs = []
    for p in dict.fromkeys([pid, *(known_workers or []), *workers(pid)]):
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(p))
    server_alive = alive(pid)
    for p in procs:
        if p.pid == pid or not server_alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
    if pid in _children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            _children[pid].wait(grace_s)  # reap our own child
    _, left = psutil.wait_procs(procs, timeout=grace_s)
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def ready(record: dict, timeout_s: float) -> str | None:
    """None when /readyz answers and a smoke request succeeds; otherwise why not."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        if not alive(record["pid"]):
            return f"the server exited during start-up (see {record['log']})"
        try:
            with urllib.request.urlopen(record["url"] + "/readyz", timeout=2) as res:
                if res.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            return f"/readyz did not answer within {timeout_s:g} s (see {record['log']})"
        time.sleep(0.5)
    return smoke(record["url"])


def smoke(url: str) -> str | None:
    """One real request through BentoML's client: the model answers, not just the process."""
    import bentoml

    try:
        with bentoml.SyncHTTPClient(url, token=os.environ.get("GENLOOP_API_KEY"), timeout=60) as client:
            out = client.generate(n=1, seed=0)
        if not out.get("samples"):
            return f"smoke request returned no samples: {out}"
    except Exception as err:  # any failure of the new Bento means: do not keep it
        return f"smoke request failed: {err}"
    return None
