"""Which version is champion of each model line, which were before it, and which were rolled back.

Per line: the champion, the champions before it (rollback targets, newest last), the versions a
rollback demoted (never promoted again by the gate: a rollback sticks until a new model passes it),
and a history of every change. Every change is read, made and written under one lock, so two flows
promoting at once cannot lose an update:
- on one machine, a JSON record beside the store (`genloop-aliases.json`), rewritten whole under a file
  lock and replaced atomically (a crash leaves the old record);
- with `site.database` set, a row per line in PostgreSQL (`genloop_champions`), changed in one
  transaction that holds the row (SELECT ... FOR UPDATE): every machine sees one record, in order.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

from tasks.core import site
from tasks.core.errors import GenloopError
from tasks.core.storage import read_json, write_json
from tasks.registry.store import home

RECORD = "genloop-aliases.json"
TABLE = "genloop_champions"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def record() -> dict:
    """Every line's entry, from the database when site.database is set, else from the local file."""
    database = site.current().database
    if database:
        return _rows(database)
    path = home() / RECORD
    return read_json(path) if path.is_file() else {}


@contextlib.contextmanager
def _editing(name: str) -> Iterator[dict]:
    """The record holding line `name`, locked against every other writer from read to write; written
    back if no error."""
    database = site.current().database
    if database:
        with _row(database, name) as data:
            yield data
        return
    from filelock import FileLock

    path = home() / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        data = read_json(path) if path.is_file() else {}
        yield data
        write_json(path, data)


def _table():
    from sqlalchemy import Column, DateTime, MetaData, Table, Text, func
    from sqlalchemy.dialects.postgresql import JSONB

    return Table(
        TABLE,
        MetaData(),
        Column("line", Text, primary_key=True),
        Column("record", JSONB, nullable=False),
        Column("updated", DateTime(timezone=True), server_default=func.now(), onupdate=func.now()),
    )


_ready: set[str] = set()  # databases where this process has seen the table


@contextlib.contextmanager
def _connect(database: str) -> Iterator:
    """A connection to the database, the table made there if missing (under an advisory lock: two
    machines starting at once do not race on CREATE TABLE)."""
    from sqlalchemy import text

    try:
        conn = site.engine(database).connect()
    except Exception as err:
        raise site.unreachable(database, err) from None
    with conn:
        if database not in _ready:
            with conn.begin():
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:t))"), {"t": TABLE})
                _table().metadata.create_all(conn, checkfirst=True)
            _ready.add(database)
        yield conn


def _rows(database: str) -> dict:
    from sqlalchemy import select

    table = _table()
    with _connect(database) as conn:
        return {line: entry for line, entry in conn.execute(select(table.c.line, table.c.record))}


@contextlib.contextmanager
def _row(database: str, name: str) -> Iterator[dict]:
    from sqlalchemy import select
    from sqlalchemy.dialects.postgresql import insert

    table = _table()
    with _connect(database) as conn, conn.begin():  # one transaction: the row is held from read to write
        conn.execute(insert(table).values(line=name, record={}).on_conflict_do_nothing())
        (entry,) = conn.execute(select(table.c.record).where(table.c.line == name).with_for_update()).one()
        data = {name: entry}
        yield data
        conn.execute(table.update().where(table.c.line == name).values(record=data[name]))


def _line(data: dict, name: str) -> dict:
    entry = data.setdefault(name, {})
    for key, empty in (("champion", None), ("previous", []), ("demoted", {}), ("history", [])):
        entry.setdefault(key, empty)
    return entry


def champion(name: str) -> str | None:
    return record().get(name, {}).get("champion")


def rolled_back(tag: str) -> dict | None:
    """When and from what a rollback demoted `tag`, or None if it never was."""
    return record().get(tag.split(":")[0], {}).get("demoted", {}).get(tag)


def alias(data: dict, tag: str) -> str:
    """How the record labels a version: champion, previous champion, rolled back, or ''."""
    entry = data.get(tag.split(":")[0], {})
    if entry.get("champion") == tag:
        return "champion"
    if tag in entry.get("demoted", {}):
        return "rolled back"
    return "previous champion" if tag in entry.get("previous", []) else ""


ANY = object()


def promote(tag: str, reason: str, over: str | object | None = ANY) -> bool:
    """Make `tag` the champion of its line; the old champion becomes the rollback target. With `over`,
    only if the champion is still that one (what the gate compared against); returns whether it did."""
    with _editing(tag.split(":")[0]) as data:
        entry = _line(data, tag.split(":")[0])
        if over is not ANY and entry["champion"] != over:
            return False
        if entry["champion"] == tag:
            return True
        if entry["champion"]:
            entry["previous"].append(entry["champion"])
        entry["champion"] = tag
        entry["demoted"].pop(tag, None)  # promoted on purpose again: no longer held back
        entry["history"].append({"at": _now(), "event": "promote", "tag": tag, "reason": reason})
    return True


def rollback(name: str) -> tuple[str, str]:
    """Return line `name` to its previous champion and hold the demoted version back from the gate.
    Returns (demoted, restored)."""
    with _editing(name) as data:
        entry = data.get(name)
        if not entry or not entry.get("previous"):
            raise GenloopError(f"{name} has no previous champion to roll back to")
        entry = _line(data, name)
        demoted, restored = entry["champion"], entry["previous"].pop()
        entry["champion"] = restored
        entry["demoted"][demoted] = {"at": _now(), "restored": restored}
        entry["history"].append({"at": _now(), "event": "rollback", "tag": restored, "from": demoted})
    return demoted, restored


def undo_rollback(demoted: str, restored: str, reason: str) -> None:
    """Put back what `rollback` changed (the restored version could not be served)."""
    with _editing(demoted.split(":")[0]) as data:
        entry = _line(data, demoted.split(":")[0])
        if entry["champion"] == restored:
            entry["previous"].append(restored)
            entry["champion"] = demoted
        entry["demoted"].pop(demoted, None)
        entry["history"].append({"at": _now(), "event": "rollback undone", "tag": demoted, "reason": reason})


def adopt(name: str, entry: dict) -> bool:
    """Take line `name`'s whole entry from another record (a migration to site.database), unless this
    record already has the line; returns whether it did."""
    with _editing(name) as data:
        if data.get(name, {}).get("champion") or data.get(name, {}).get("history"):
            return False
        data[name] = entry
    return True
