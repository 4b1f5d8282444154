"""retrain: the closed loop's own decisions, around the stages the retrain flow runs (flows/retrain.py).

Not a DVC stage: it reads the world as it is now (the history of retrains, the served ratings). Every
run records why it started (its trigger: the schedule, a drift event with its scores, the feedback
threshold, or a person) and how it ended (promoted and deployed with the version, rejected with the
gate's reasons, skipped by a named guardrail, or failed), in artifacts/retrain/history.jsonl and a
Prefect artifact. The guardrails (params `retrain`):
- cooldown: no retrain starts within `cooldown_hours` of the last one;
- daily cap: at most `max_per_day` retrains in any 24 hours;
- new data: `min_new_files` source files the last retrain did not have, or `min_new_ratings` ratings
  since it started.
Only runs that went on to train count as retrains; a skipped run is recorded but starts no cooldown.
The retrain deployment's `concurrency_limit: 1` (prefect.yaml) keeps two triggers from running two.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.core import paths
from tasks.core.errors import GenloopError
from tasks.core.orchestration import publish_markdown, task
from tasks.core.params import Params, RetrainParams

if TYPE_CHECKING:
    from prefect.states import State
from tasks.core.storage import read_json, write_json

OUT = paths.ARTIFACTS / "retrain"
HISTORY = OUT / "history.jsonl"
TRAINED = OUT / "trained_files.json"  # sha256 of every source file the last retrain trained on
FEEDBACK_EVENT = "genloop.feedback.ready"
FEEDBACK_SENT = paths.STATE / "retrain" / "feedback-sent.json"
TRIGGERS = ("schedule", "drift", "feedback", "person")
DAY_S = 24 * 3600


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def history(limit: int | None = None) -> list[dict]:
    """The recorded runs, oldest first (the last `limit`)."""
    if not HISTORY.is_file():
        return []
    lines = [json.loads(line) for line in HISTORY.read_text().splitlines() if line.strip()]
    return lines[-limit:] if limit else lines


def _append(record: dict, keep: int) -> None:
    """Add `record`; keep the last `keep` lines. Written whole and replaced (a crash keeps the old file)."""
    lines = [json.dumps(r, sort_keys=True) for r in history()][-(keep - 1) :] if keep > 1 else []
    HISTORY.parent.mkdir(parents=True, exist_ok=True)
    tmp = HISTORY.with_suffix(".tmp")
    tmp.write_text("\n".join([*lines, json.dumps(record, sort_keys=True)]) + "\n")
    tmp.replace(HISTORY)


def retrains(records: list[dict]) -> list[dict]:
    """The runs that went on to train (not skipped by a guardrail)."""
    return [r for r in records if r.get("outcome") not in ("skipped", None)]


def guardrail(rp: RetrainParams, now: float, records: list[dict]) -> str | None:
    """The guardrail on timing that stops a run starting at `now`, with why; None if none does."""
    ran = [r["started_at"] for r in retrains(records)]
    if ran and now - max(ran) < rp.cooldown_hours * 3600:
        left_h = (max(ran) + rp.cooldown_hours * 3600 - now) / 3600
        last = _stamp(max(ran))
        return f"cooldown: the last retrain started {last}, {left_h:.1f} h of {rp.cooldown_hours:g} h left"
    today = [t for t in ran if now - t < DAY_S]
    if len(today) >= rp.max_per_day:
        return f"max_per_day: {len(today)} retrains in the last 24 hours (max_per_day {rp.max_per_day})"
    return None


def _last_start() -> float | None:
    """When the last retrain that went on to train started (None: there was none)."""
    ran = retrains(history())
    return ran[-1]["started_at"] if ran else None


def _source_files() -> set[str]:
    return {f["sha256"] for f in read_json(paths.MANIFEST)["files"]} if paths.MANIFEST.is_file() else set()


def new_ratings(params: Params, since: float | None, until: float) -> int:
    """Ratings given since `since` to samples of this model line, in every replica's serving.db."""
    from tasks.core.params import line
    from tasks.monitoring import logs
    from tasks.registry import store
    from tasks.serving.process import SERVING

    log = logs.open_logs(params.require("monitor").logs, SERVING)
    return len(log.ratings(f"{store.name_of(line(params))}:", since or 0.0, until))


def new_data(params: Params, since: float | None, now: float) -> dict:
    """What the last retrain did not have: source files (in data/raw, as collected) and ratings. Before
    the first retrain, what the champion was trained on (the lifecycle trained it)."""
    trained = set(read_json(TRAINED)) if TRAINED.is_file() else _champions_files(params)
    return {"files": len(_source_files() - trained), "ratings": new_ratings(params, since, now)}


def _champions_files(params: Params) -> set[str]:
    """sha256 of the source files the champion was trained on: its lineage names data/raw's DVC hash,
    whose listing in DVC's cache (wherever `cache.dir` puts it) leads to that batch's manifest.json.
    Empty when any is missing."""
    from dvc.repo import Repo

    from tasks.core.params import line
    from tasks.registry import champions, store

    try:
        tag = champions.champion(store.name_of(line(params)))
        raw = store.info(tag)["metadata"]["lineage"]["dvc"]["data/raw"] if tag else None
        if not raw:
            return set()
        with Repo() as repo:
            cached = repo.cache.local.oid_to_path
            listing = json.loads(Path(cached(raw)).read_text())
            md5 = next(entry["md5"] for entry in listing if entry["relpath"] == "manifest.json")
            manifest = json.loads(Path(cached(md5)).read_text())
        return {f["sha256"] for f in manifest["files"]}
    except Exception:  # a champion pruned from the store, an older lineage, an emptied cache: all new
        return set()


def too_little(rp: RetrainParams, new: dict) -> str | None:
    if new["files"] >= rp.min_new_files or new["ratings"] >= rp.min_new_ratings:
        return None
    return (
        f"min_new_data: {new['files']} new source files (min_new_files {rp.min_new_files}) and "
        f"{new['ratings']} new ratings (min_new_ratings {rp.min_new_ratings}) since the last retrain"
    )


def begin(params: Params, trigger: str, detail: dict | None, force: bool, now: float | None = None) -> dict:
    """The run's record, with `skipped` naming the timing guardrail that stops it (None: go on)."""
    if trigger not in TRIGGERS:
        raise GenloopError(f"unknown retrain trigger {trigger!r}: one of {', '.join(TRIGGERS)}")
    rp = params.require("retrain")
    now = time.time() if now is None else now
    record = {"started": _stamp(now), "started_at": now, "trigger": trigger, "detail": detail or {}}
    record["force"] = force
    record["skipped"] = None if force else guardrail(rp, now, history())
    return record


def check_new_data(params: Params, record: dict) -> dict:
    """After collect: how much is new since the last retrain, and whether that is enough."""
    record["new"] = new_data(params, _last_start(), record["started_at"])
    if not record["force"]:
        record["skipped"] = too_little(params.require("retrain"), record["new"])
    if record["skipped"] is None:
        TRAINED.parent.mkdir(parents=True, exist_ok=True)
        write_json(TRAINED, sorted(_source_files()))
    return record


def finish(params: Params, record: dict, outcome: str, **fields: object) -> dict:
    """Close the record (promoted, rejected, skipped or failed), keep it in the history, show it."""
    now = time.time()
    record = record | fields | {"outcome": outcome, "finished": _stamp(now)}
    record["seconds"] = round(now - record["started_at"], 1)
    _append(record, params.require("retrain").keep_history)
    publish_markdown("retrain", markdown(record), f"retrain: {outcome}")
    return record


def markdown(record: dict) -> str:
    """One run for the Prefect UI: why it started, how it ended."""
    why = record["trigger"] + (f" {json.dumps(record['detail'], sort_keys=True)}" if record["detail"] else "")
    lines = [f"### Retrain: {record['outcome']}", "", f"- started {record['started']} by **{why}**"]
    if record.get("skipped"):
        lines.append(f"- skipped by the guardrail {record['skipped']}")
    if record.get("new"):
        new = record["new"]
        lines.append(f"- new since the last retrain: {new['files']} files, {new['ratings']} ratings")
    for key in ("version", "deployed", "reasons", "error"):
        if record.get(key):
            lines.append(f"- {key}: {record[key]}")
    lines.append(f"- {record['seconds']} s; history: `{HISTORY}`")
    return "\n".join(lines)


def describe(record: dict) -> str:
    """One line for `genloop status`."""
    what = {
        "promoted": f"promoted {record.get('version')}" + (", deployed" if record.get("deployed") else ""),
        "rejected": f"rejected {record.get('version')}: {'; '.join(record.get('reasons') or [])}",
        "skipped": f"skipped: {record.get('skipped')} (`genloop flow retrain --force` runs past it)",
        "failed": f"failed: {record.get('error')}",
    }.get(record["outcome"], record["outcome"])
    return f"{record['started']}  {record['trigger']:<8}  {what}"


def feedback_due(params: Params, now: float | None = None) -> dict | None:
    """The feedback trigger's payload when a new batch of `min_new_ratings` ratings came in since the
    last retrain: once per batch, not at every monitor run that finds the same ratings again."""
    rp = params.require("retrain")
    now = time.time() if now is None else now
    since = _last_start()
    count = new_ratings(params, since, now)
    due = {"ratings": count, "since": _stamp(since) if since else None}
    sent = read_json(FEEDBACK_SENT) if FEEDBACK_SENT.is_file() else {}
    told = sent.get("ratings", 0) if sent.get("since") == due["since"] else 0  # this batch's, since then
    records = history()
    if any(r["outcome"] == "skipped" and r["started_at"] >= sent.get("at", 0) for r in records):
        # the retrain it started was held back by a guardrail: told again once none holds it back
        told = 0 if guardrail(rp, now, records) is None else told
    return due if count >= told + rp.min_new_ratings else None


def feedback_sent(due: dict, now: float | None = None) -> None:
    """Remember the batch that genloop.feedback.ready was sent for (feedback_due waits for the next)."""
    write_json(FEEDBACK_SENT, due | {"at": time.time() if now is None else now})


@task(name="feedback threshold")
def feedback_task() -> dict | None:
    """Send genloop.feedback.ready when enough new ratings came in (the hourly monitor runs this)."""
    from prefect.events import emit_event

    from tasks.core.params import load

    params = load()
    if params.retrain is None:
        return None
    due = feedback_due(params)
    if due is not None:
        emit_event(event=FEEDBACK_EVENT, resource={"prefect.resource.id": "genloop.feedback"}, payload=due)
        if os.environ.get("PREFECT_API_URL"):  # a server that triggers on it (not a temporary one)
            feedback_sent(due)
    return due


@task(name="retrain: guardrails")
def begin_task(trigger: str, detail: dict | None, force: bool) -> dict:
    from tasks.core.params import line, load
    from tasks.registry import champions, store

    params = load()
    record = begin(params, trigger, detail, force)
    record["champion_before"] = champions.champion(store.name_of(line(params)))
    return record


@task(name="retrain: new data")
def new_data_task(record: dict) -> dict:
    from tasks.core.params import load

    return check_new_data(load(), record)


@task(name="retrain: record")
def finish_task(record: dict, outcome: str, **fields: object) -> dict:
    from tasks.core.params import load

    done = finish(load(), record, outcome, **fields)
    print(describe(done))
    return done


def ended(record: dict) -> State:
    """The retrain flow run's final state: Completed, named by its outcome (Skipped, Rejected, Promoted,
    Unchanged), so that the runs list of the Prefect UI tells them apart; its message is the outcome's
    line, and its result the record."""
    from prefect.states import Completed

    return Completed(name=record["outcome"].capitalize(), message=describe(record), data=record)


@task(name="retrain: keep the champion")
def keep_champion_task(version: str) -> str | None:
    """After a failed deploy of the newly promoted `version`: the previous champion is champion again
    (deploy kept or restarted its server) and what package records is its Bento. Returns it."""
    from tasks import package
    from tasks.core.params import line, load
    from tasks.registry import champions, store

    params = load()
    name = store.name_of(line(params))
    if champions.champion(name) != version:
        return None
    _, restored = champions.rollback(name)
    package.build(params, restored)
    return restored
