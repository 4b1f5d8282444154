"""The managed `bentoml serve` process of a deployment: start, health-check, smoke-test, stop.

A served Bento is one process group (its own session, so it outlives the command that started it) with
BentoML's workers under it; its output goes to a log file in .genloop/deploy/. A record names each
process by pid and start time, and nothing is signalled unless both still match: a pid the system
has since given to another program is left alone.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from tasks.core import paths, site
from tasks.core.storage import pid_alive
from tasks.registry import store

DEPLOY = paths.STATE / "deploy"
SERVING = paths.STATE / "serving"  # feedback and request log (service/store.py)


_children: dict[int, subprocess.Popen] = {}  # servers started by this process: poll() reaps them


def alive(pid: int) -> bool:
    if pid in _children:
        return _children[pid].poll() is None  # reaps our own child, which kill(pid, 0) sees as a zombie
    return pid_alive(pid)


def started(pid: int) -> float | None:
    """A process's start time (its identity together with the pid), None if it is gone."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def ours(pid: int, since: float | None) -> bool:
    """The process `pid` is still the one recorded (same start time; records without one: a
    BentoML server or worker by its command line)."""
    import psutil

    if not alive(pid):
        return False
    try:
        proc = psutil.Process(pid)
        if since is not None:
            return proc.create_time() == since
        return any("bentoml" in part or "tasks.serving.launch" in part for part in proc.cmdline())
    except psutil.Error:
        return False


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
    import secrets

    from models import cores

    store.home()
    DEPLOY.mkdir(parents=True, exist_ok=True)
    log_path = DEPLOY / f"{bento.replace(':', '-')}.log"
    # tells this server's answers from an old one's on a shared port
    server_id = secrets.token_hex(8) if tags_answers(bento) else None
    env = {**os.environ, "GENLOOP_SERVING_DIR": str(SERVING.resolve()), "BENTOML_DO_NOT_TRACK": "true",
           "GENLOOP_SERVER_ID": server_id or "", "GENLOOP_LOG_FILE": str(log_path.resolve()),
           **cores.variables(), **site.current().variables()}  # fmt: skip
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
    return {"bento": bento, "pid": proc.pid, "started": started(proc.pid), "server_id": server_id,
            "url": url, "host": host, "port": port, "log": str(log_path),
            "reuseport": server_id is not None}  # fmt: skip


def workers(pid: int) -> list[list]:
    """BentoML's worker processes under a server (each in its own session, so not in its group), as
    [pid, start time] pairs."""
    import psutil

    try:
        return [[p.pid, p.create_time()] for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _identities(record: dict) -> list[tuple[int, float | None]]:
    """The server and its workers as recorded (older records list worker pids alone)."""
    known = [(w[0], w[1]) if isinstance(w, list) else (w, None) for w in record.get("workers") or []]
    return [(record["pid"], record.get("started")), *known]


def stop(record: dict, grace_s: float = 30.0) -> None:
    """SIGTERM to the server, which drains (tasks/serving/launch.py) and stops its workers; SIGKILL
    after a grace. Workers left behind by a server that was killed outright are stopped directly
    (they would still hold the port). Only processes that are still the recorded ones are signalled."""
    import psutil

    pid = record["pid"]
    server_ours = ours(pid, record.get("started"))
    candidates = _identities(record)
    if server_ours:
        candidates += [(p, t) for p, t in workers(pid)]
    procs = []
    for p, since in dict.fromkeys(candidates):
        if ours(p, since):
            with contextlib.suppress(psutil.NoSuchProcess):
                procs.append(psutil.Process(p))
    for p in procs:
        if p.pid == pid or not server_ours:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
    if pid in _children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            _children[pid].wait(grace_s)  # reap our own child
    _, left = psutil.wait_procs(procs, timeout=grace_s)
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def tags_answers(bento: str) -> bool:
    """The Bento's service marks its answers with GENLOOP_SERVER_ID (Bentos built before it did not:
    they cannot start beside an old server, which is stopped first)."""
    guard = Path(store.bentoml().get(bento).path) / "src" / "service" / "guard.py"
    return guard.is_file() and "GENLOOP_SERVER_ID" in guard.read_text()


def _from(record: dict, response) -> bool:
    """The answer came from this server (not from an old one sharing its port)."""
    return record["server_id"] is None or response.headers.get("x-genloop-server") == record["server_id"]


def ready(record: dict, timeout_s: float) -> str | None:
    """None when this server's /readyz answers and a smoke request to it succeeds; otherwise why not.
    Every request opens its own connection, so that on a port shared with the old server the kernel
    hands some to the new one; only the new one's answers count."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if not alive(record["pid"]):
            return f"the server exited during start-up (see {record['log']})"
        try:
            res = httpx.get(record["url"] + "/readyz", timeout=2)
            if res.status_code == 200 and _from(record, res):
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            return f"/readyz did not answer within {timeout_s:g} s (see {record['log']})"
        time.sleep(0.2)
    return smoke(record, deadline)


def smoke(record: dict, deadline: float) -> str | None:
    """One real request answered by this server: the model answers, not just the process."""
    import httpx

    key = os.environ.get("GENLOOP_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    while True:
        try:
            res = httpx.post(
                record["url"] + "/generate", json={"n": 1, "seed": 0}, headers=headers, timeout=60
            )
        except httpx.HTTPError as err:
            return f"smoke request failed: {err}"
        if _from(record, res):
            if res.status_code != 200 or not res.json().get("samples"):
                return f"smoke request failed: {res.status_code} {res.text[:300]}"
            return None
        if time.monotonic() > deadline:
            return "smoke request: no answer from the new server (the old one took every connection)"
