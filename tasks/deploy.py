"""deploy / rollback / undeploy: run a Bento as a managed background `bentoml serve` on this machine.

A deployment is one process group with a pid, a log file and a record in .genloop/deploy/:
`current.json` (what is serving, where, since when) and `log.jsonl` (every deploy, failure, rollback
and undeploy, appended). Deploying stops the running Bento, starts the new one, waits for /readyz and
sends a smoke request through BentoML's own client; if any of that fails, the new process is stopped
and the previous Bento started again, so a broken Bento never stays in place of a working one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prefect import task

from tasks import paths, registry
from tasks.errors import GenloopError
from tasks.params import Params
from tasks.storage import read_json, write_json

DEPLOY = paths.STATE / "deploy"
CURRENT, LOG = DEPLOY / "current.json", DEPLOY / "log.jsonl"
SERVING = paths.STATE / "serving"  # feedback and request log (service/store.py)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _log(event: dict) -> None:
    DEPLOY.mkdir(parents=True, exist_ok=True)
    with open(LOG, "a") as f:
        f.write(json.dumps({"at": _now(), **event}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def current() -> dict | None:
    """The running deployment, or None (a record whose process died is reported as not running)."""
    if not CURRENT.is_file():
        return None
    record = read_json(CURRENT)
    record["running"] = _alive(record["pid"])
    return record


def history(last: int = 10) -> list[dict]:
    if not LOG.is_file():
        return []
    return [json.loads(line) for line in LOG.read_text().splitlines()[-last:]]


_children: dict[int, subprocess.Popen] = {}  # servers started by this process: poll() reaps them


def _alive(pid: int) -> bool:
    if pid in _children:
        return _children[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_free(host: str, port: int, wait_s: float = 20.0) -> bool:
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


def _start(bento: str, host: str, port: int) -> dict:
    registry.home()
    DEPLOY.mkdir(parents=True, exist_ok=True)
    log_path = DEPLOY / f"{bento.replace(':', '-')}.log"
    env = {**os.environ, "GENLOOP_SERVING_DIR": str(SERVING.resolve()), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml_cli = Path(sys.executable).parent / "bentoml"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(bentoml_cli), "serve", bento, "--host", host, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopped as a whole, outlives this command
        )
    _children[proc.pid] = proc
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    return {"bento": bento, "pid": proc.pid, "url": url, "host": host, "port": port, "log": str(log_path)}


def _workers(pid: int) -> list[int]:
    """BentoML's worker processes under a server (each in its own session, so not in its group)."""
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop(pid: int, workers: list[int] | None = None, grace_s: float = 20.0) -> None:
    """SIGTERM to the server, which stops its workers cleanly; SIGKILL after a grace. Workers left
    behind by a server that was killed outright are stopped directly (they would still hold the port)."""
    import psutil

    procs = []
    for p in dict.fromkeys([pid, *(workers or []), *_workers(pid)]):
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(p))
    server_alive = _alive(pid)
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


def _ready(record: dict, timeout_s: float) -> str | None:
    """None when /readyz answers and a smoke request succeeds; otherwise why not."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        if not _alive(record["pid"]):
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
    return _smoke(record["url"])


def _smoke(url: str) -> str | None:
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


def deploy(params: Params, bento: str | None = None, reason: str = "deploy") -> dict:
    """Serve `bento` (default: the one the package stage built) in place of the running deployment."""
    serve = params.require("serve")
    if bento is None:
        from tasks.package import OUT

        built = read_json(OUT)
        bento = built["bento"]
        if bento is None:
            raise GenloopError(f"nothing to deploy: {built.get('reason')}")
    try:  # refuse an unknown Bento before touching the running deployment
        registry.store().get(bento)
    except Exception as err:
        raise GenloopError(f"no Bento {bento!r} in {registry.home()}: {err}") from None
    previous = current()
    if previous:
        _stop(previous["pid"], previous.get("workers"))
    if not _port_free(serve.host, serve.port):
        raise GenloopError(f"port {serve.port} on {serve.host} is taken by another program (serve.port)")
    record = _start(bento, serve.host, serve.port) | {"since": _now(), "reason": reason}
    problem = _ready(record, serve.ready_timeout_s)
    if problem is None:
        record["model"] = _bento_model(bento)
        record["workers"] = _workers(record["pid"])
        write_json(CURRENT, record)
        _log(
            {
                "event": "deploy",
                "bento": bento,
                "model": record["model"],
                "url": record["url"],
                "reason": reason,
            }
        )
        return record
    _stop(record["pid"])
    _log({"event": "deploy failed", "bento": bento, "why": problem})
    if previous and _port_free(serve.host, serve.port):
        restored = _start(previous["bento"], previous["host"], previous["port"])
        restored |= {"since": _now(), "reason": f"restored after a failed deploy of {bento}",
                     "model": previous.get("model")}  # fmt: skip
        again = _ready(restored, serve.ready_timeout_s)
        if again is None:
            write_json(CURRENT, restored)
            _log({"event": "restore", "bento": previous["bento"], "url": restored["url"]})
            raise GenloopError(
                f"deploy of {bento} failed: {problem}\nkept {previous['bento']} serving at {restored['url']}"
            )
        _stop(restored["pid"])
        CURRENT.unlink(missing_ok=True)
        raise GenloopError(
            f"deploy of {bento} failed: {problem}\n"
            f"and the previous {previous['bento']} did not come back: {again}"
        )
    CURRENT.unlink(missing_ok=True)
    raise GenloopError(f"deploy of {bento} failed: {problem}")


def _bento_model(bento: str) -> str | None:
    bentoml = registry.store()
    return bentoml.get(bento).info.labels.get("model")


def undeploy() -> dict | None:
    record = current()
    if record is None:
        return None
    _stop(record["pid"], record.get("workers"))
    CURRENT.unlink(missing_ok=True)
    _log({"event": "undeploy", "bento": record["bento"]})
    return record


def rollback(params: Params) -> dict:
    """Return to the previous champion: relabel it in the registry, package it and deploy it."""
    from tasks import package

    name = registry.name_of(params.require("model").family)
    demoted, restored = registry.rollback(name)
    try:
        built = package.build(params, restored, record=False)
        return deploy(params, built["bento"], reason=f"rollback from {demoted}")
    except GenloopError:
        registry.promote(demoted, "rollback failed: kept serving this version")
        raise


@task(name="deploy")
def deploy_task(bento: str | None = None) -> dict:
    from tasks.params import load

    return deploy(load(), bento)
