"""deploy / rollback / undeploy: run a Bento as a managed background `bentoml serve` on this machine.

A deployment is one process group (tasks/serving/process.py) with a record in .genloop/deploy/:
`current.json` (what is serving, where, since when, which processes) and `log.jsonl` (every deploy,
failure, rollback, undeploy and repair, appended). One deploy, rollback or undeploy runs at a time
(a file lock); each first repairs what a killed one left (`reconcile`).

Deploying starts the new Bento beside the running one, on the same port (SO_REUSEPORT), after
recording it in `starting.json`; it waits for the new server's /readyz and a smoke request answered
by it, and only then records it as current and stops the old one, which finishes the requests in
flight. Clients see no refused connection. If the new one fails, it is stopped and the old one never
stopped serving. (A deployment started before servers shared their port is stopped first, as is one
on another port.)

A rollback returns the model line to its previous champion, packages it (rewriting
artifacts/package/bento.json, so a later `genloop deploy`, the deploy flow and `dvc repro` all build on
the restored champion) and deploys it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterator

from tasks.core.errors import GenloopError
from tasks.core.orchestration import task
from tasks.core.params import Params, line
from tasks.core.storage import read_json, write_json
from tasks.registry import bentos, champions, store
from tasks.serving import process
from tasks.serving.process import DEPLOY

CURRENT, LOG, STARTING = DEPLOY / "current.json", DEPLOY / "log.jsonl", DEPLOY / "starting.json"
LOCK_WAIT_S = 600  # a deploy waits this long for another one to finish


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _log(event: dict) -> None:
    DEPLOY.mkdir(parents=True, exist_ok=True)
    with open(LOG, "a") as f:
        f.write(json.dumps({"at": _now(), **event}) + "\n")
        f.flush()
        os.fsync(f.fileno())


_locks: dict = {}


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """One deploy, rollback or undeploy at a time (re-entrant: a rollback deploys under its lock)."""
    from filelock import FileLock, Timeout

    DEPLOY.mkdir(parents=True, exist_ok=True)
    path = str((DEPLOY / "deploy.lock").resolve())
    lock = _locks.setdefault(path, FileLock(path))
    try:
        with lock.acquire(timeout=LOCK_WAIT_S):
            yield
    except Timeout:
        raise GenloopError(
            f"another deploy, rollback or undeploy has held {path} for {LOCK_WAIT_S} s"
        ) from None


def current() -> dict | None:
    """The running deployment, or None (a record whose process died, or whose pid now belongs to
    another program, is reported as not running)."""
    if not CURRENT.is_file():
        return None
    record = read_json(CURRENT)
    record["running"] = process.ours(record["pid"], record.get("started"))
    return record


def interrupted() -> dict | None:
    """A deploy that was started and neither finished nor cleaned up (killed, or running now)."""
    return read_json(STARTING) if STARTING.is_file() else None


def reconcile() -> list[str]:
    """Repair what a killed deploy left (call under the lock): a server it started that never passed
    its checks is stopped, and an old server it had replaced but not yet stopped is stopped."""
    done = []
    pending = interrupted()
    if pending is not None:
        if pending.get("pid") and process.ours(pending["pid"], pending.get("started")):
            process.stop(pending)
            done.append(f"stopped {pending['bento']} (pid {pending['pid']}), left by an interrupted deploy")
        STARTING.unlink(missing_ok=True)
    record = current()
    replaced = (record or {}).get("replaces")
    if replaced and process.ours(replaced["pid"], replaced.get("started")):
        process.stop(replaced)
        done.append(f"stopped {replaced['bento']} (pid {replaced['pid']}), replaced by {record['bento']}")
    for note in done:
        _log({"event": "reconcile", "what": note})
    return done


def history(last: int = 10) -> list[dict]:
    if not LOG.is_file():
        return []
    return [json.loads(line) for line in LOG.read_text().splitlines()[-last:]]


def packaged() -> str:
    """The Bento the package stage built last, or a GenloopError saying what to run first."""
    from tasks.package import OUT

    if not OUT.is_file():
        raise GenloopError("nothing is packaged yet: run `dvc repro` (the whole pipeline) first, then deploy")
    built = read_json(OUT)
    if built["bento"] is None:
        raise GenloopError(f"nothing to deploy: {built.get('reason')}")
    return built["bento"]


def _require_bento(bento: str) -> None:
    """Refuse an unknown Bento before touching the running deployment, naming the ones there are."""
    bentoml = store.bentoml()
    try:
        bentos.get(bento)  # here, or built by another machine and shared (site.remote)
    except GenloopError:
        raise  # the shared registry could not be read: its own message
    except Exception:  # NotFound, or a malformed tag
        known = sorted(str(b.tag) for b in bentoml.list())
        hint = (
            f"Bentos here: {', '.join(known[-8:])}" if known else "there are none yet: run the package stage"
        )
        raise GenloopError(f"no Bento {bento!r} in {store.home()}/bentos; {hint}") from None
    bentos.verify(bento)  # whole, and its model's weights intact


def _identity(record: dict) -> dict:
    return {k: record.get(k) for k in ("bento", "pid", "started", "workers")}


def deploy(params: Params, bento: str | None = None, reason: str = "deploy") -> dict:
    """Serve `bento` (default: the one the package stage built) in place of the running deployment."""
    serve = params.require("serve")
    bento = bento or _champions_bento(params, packaged())
    with locked():
        _require_bento(bento)
        reconcile()
        previous = current()
        if previous is not None and not previous["running"]:
            previous = None
        same_port = previous is not None and (previous["host"], previous["port"]) == (serve.host, serve.port)
        overlap = same_port and previous.get("reuseport", False) and process.tags_answers(bento)
        if previous is not None and not overlap:
            process.stop(previous)  # it cannot share the port: this deploy has a gap
        if not overlap and not process.port_free(serve.host, serve.port):
            raise GenloopError(f"port {serve.port} on {serve.host} is taken by another program (serve.port)")
        write_json(STARTING, {"bento": bento, "since": _now(), "by": os.getpid()})  # before anything starts
        record = process.start(bento, serve.host, serve.port) | {"since": _now(), "reason": reason}
        write_json(STARTING, record)
        problem = process.ready(record, serve.ready_timeout_s)
        if problem is None:
            record["model"] = _bento_model(bento)
            record["workers"] = process.workers(record["pid"])
            if overlap:
                record["replaces"] = _identity(previous)
            write_json(CURRENT, record)
            STARTING.unlink(missing_ok=True)
            if overlap:
                process.stop(previous)  # drains: the requests it holds finish
            _log({"event": "deploy", "bento": bento, "model": record["model"], "url": record["url"],
                  "reason": reason})  # fmt: skip
            return record
        process.stop(record)
        STARTING.unlink(missing_ok=True)
        _log({"event": "deploy failed", "bento": bento, "why": problem})
        if overlap:
            raise GenloopError(
                f"deploy of {bento} failed: {problem}\nkept {previous['bento']} serving at {previous['url']}"
            )
        if previous is not None:
            return _restore(previous, bento, problem, serve.ready_timeout_s)
        CURRENT.unlink(missing_ok=True)
        raise GenloopError(f"deploy of {bento} failed: {problem}")


def _restore(previous: dict, bento: str, problem: str, timeout_s: float) -> dict:
    """Start the previous Bento again after a failed deploy that had to stop it first."""
    if not process.port_free(previous["host"], previous["port"]):
        CURRENT.unlink(missing_ok=True)
        raise GenloopError(f"deploy of {bento} failed: {problem}\nand port {previous['port']} is taken")
    restored = process.start(previous["bento"], previous["host"], previous["port"])
    restored |= {"since": _now(), "reason": f"restored after a failed deploy of {bento}",
                 "model": previous.get("model")}  # fmt: skip
    write_json(STARTING, restored)
    again = process.ready(restored, timeout_s)
    STARTING.unlink(missing_ok=True)
    if again is None:
        restored["workers"] = process.workers(restored["pid"])
        write_json(CURRENT, restored)
        _log({"event": "restore", "bento": previous["bento"], "url": restored["url"]})
        raise GenloopError(
            f"deploy of {bento} failed: {problem}\nkept {previous['bento']} serving at {restored['url']}"
        )
    process.stop(restored)
    CURRENT.unlink(missing_ok=True)
    raise GenloopError(
        f"deploy of {bento} failed: {problem}\n"
        f"and the previous {previous['bento']} did not come back: {again}"
    )


def _bento_model(bento: str) -> str | None:
    return store.bentoml().get(bento).info.labels.get("model")


def _champions_bento(params: Params, bento: str) -> str:
    """The packaged Bento, or, with site.database set, the champion's when the champion changed since it
    was built (a rollback or promotion on another machine): packaged then, imported when shared. On one
    machine a deploy stays what the package stage built (`genloop status` warns when that is not the
    champion)."""
    from tasks import package
    from tasks.core import site

    if not site.current().database:
        return bento
    champion = champions.champion(store.name_of(line(params)))
    try:
        serves = bentos.get(bento).info.labels.get("model")
    except store.bentoml().exceptions.NotFound:
        serves = None  # neither here nor shared: package the champion
    if champion is None or serves == champion:
        return bento
    built = package.build(params, champion)
    print(f"the champion of {store.name_of(line(params))} is now {champion}: deploying {built['bento']}")
    return built["bento"]


def undeploy() -> dict | None:
    """Stop the deployment (draining it); None if nothing was deployed. Says "stopped" only once it has."""
    with locked():
        reconcile()
        record = current()
        if record is None:
            return None
        process.stop(record)
        if process.ours(record["pid"], record.get("started")):
            raise GenloopError(f"could not stop {record['bento']} (pid {record['pid']}): it is still running")
        CURRENT.unlink(missing_ok=True)
        _log({"event": "undeploy", "bento": record["bento"]})
        return record


def rollback(params: Params) -> dict:
    """Return to the previous champion: relabel it in the registry, package it (recorded as what the
    package stage built) and deploy it. If that fails, the registry is put back as it was."""
    from tasks import package

    name = store.name_of(line(params))
    with locked():
        demoted, restored = champions.rollback(name)
        try:
            built = package.build(params, restored)
            return deploy(params, built["bento"], reason=f"rollback from {demoted}")
        except GenloopError:
            champions.undo_rollback(demoted, restored, "rollback failed: kept serving this version")
            package.build(params, demoted)
            raise


@task(name="deploy")
def deploy_task(bento: str | None = None) -> dict:
    from tasks.core.params import load

    return deploy(load(), bento)


@task(name="deploy (unless already served)")
def serve_task(bento: str) -> dict:
    """Deploy `bento` unless it is what runs already (the lifecycle flow, run again, changes nothing)."""
    from tasks.core.params import load

    record = current()
    if record is not None and record["running"] and record["bento"] == bento:
        return record | {"action": "already served"}
    return deploy(load(), bento) | {"action": "deployed"}
