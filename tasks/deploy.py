"""deploy / rollback / undeploy: run a Bento as a managed background `bentoml serve` on this machine.

A deployment is one process group (tasks/serving/process.py) with a record in .genloop/deploy/:
`current.json` (what is serving, where, since when) and `log.jsonl` (every deploy, failure, rollback
and undeploy, appended). Deploying stops the running Bento, starts the new one, waits for /readyz and
sends a smoke request through BentoML's own client; if any of that fails, the new process is stopped
and the previous Bento started again, so a broken Bento never stays in place of a working one.

A rollback returns the model line to its previous champion, packages it (rewriting
artifacts/package/bento.json, so a later `genloop deploy`, the deploy flow and `dvc repro` all build on
the restored champion) and deploys it.
"""

from __future__ import annotations

import datetime as dt
import json
import os

from prefect import task

from tasks.core.errors import GenloopError
from tasks.core.params import Params, line
from tasks.core.storage import read_json, write_json
from tasks.registry import bentos, champions, store
from tasks.serving import process
from tasks.serving.process import DEPLOY

CURRENT, LOG = DEPLOY / "current.json", DEPLOY / "log.jsonl"


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
    record["running"] = process.alive(record["pid"])
    return record


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
        bentoml.get(bento)
    except Exception:
        known = sorted(str(b.tag) for b in bentoml.list())
        hint = (
            f"Bentos here: {', '.join(known[-8:])}" if known else "there are none yet: run the package stage"
        )
        raise GenloopError(f"no Bento {bento!r} in {store.home()}/bentos; {hint}") from None
    bentos.verify(bento)  # whole, and its model's weights intact


def deploy(params: Params, bento: str | None = None, reason: str = "deploy") -> dict:
    """Serve `bento` (default: the one the package stage built) in place of the running deployment."""
    serve = params.require("serve")
    bento = bento or packaged()
    _require_bento(bento)
    previous = current()
    if previous:
        process.stop(previous["pid"], previous.get("workers"))
    if not process.port_free(serve.host, serve.port):
        raise GenloopError(f"port {serve.port} on {serve.host} is taken by another program (serve.port)")
    record = process.start(bento, serve.host, serve.port) | {"since": _now(), "reason": reason}
    problem = process.ready(record, serve.ready_timeout_s)
    if problem is None:
        record["model"] = _bento_model(bento)
        record["workers"] = process.workers(record["pid"])
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
    process.stop(record["pid"])
    _log({"event": "deploy failed", "bento": bento, "why": problem})
    if previous and process.port_free(serve.host, serve.port):
        restored = process.start(previous["bento"], previous["host"], previous["port"])
        restored |= {"since": _now(), "reason": f"restored after a failed deploy of {bento}",
                     "model": previous.get("model")}  # fmt: skip
        again = process.ready(restored, serve.ready_timeout_s)
        if again is None:
            write_json(CURRENT, restored)
            _log({"event": "restore", "bento": previous["bento"], "url": restored["url"]})
            raise GenloopError(
                f"deploy of {bento} failed: {problem}\nkept {previous['bento']} serving at {restored['url']}"
            )
        process.stop(restored["pid"])
        CURRENT.unlink(missing_ok=True)
        raise GenloopError(
            f"deploy of {bento} failed: {problem}\n"
            f"and the previous {previous['bento']} did not come back: {again}"
        )
    CURRENT.unlink(missing_ok=True)
    raise GenloopError(f"deploy of {bento} failed: {problem}")


def _bento_model(bento: str) -> str | None:
    return store.bentoml().get(bento).info.labels.get("model")


def undeploy() -> dict | None:
    record = current()
    if record is None:
        return None
    process.stop(record["pid"], record.get("workers"))
    CURRENT.unlink(missing_ok=True)
    _log({"event": "undeploy", "bento": record["bento"]})
    return record


def rollback(params: Params) -> dict:
    """Return to the previous champion: relabel it in the registry, package it (recorded as what the
    package stage built) and deploy it. If that fails, the registry is put back as it was."""
    from tasks import package

    name = store.name_of(line(params))
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
