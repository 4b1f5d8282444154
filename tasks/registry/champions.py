"""Which version is champion of each model line, which were before it, and which were rolled back.

One JSON record beside the store (`genloop-aliases.json`), read and rewritten whole under a file lock
(two flows promoting at once cannot lose an update) and replaced atomically (a crash leaves the old
record). Per line: the champion, the champions before it (rollback targets, newest last), the versions
a rollback demoted (never promoted again by the gate: a rollback sticks until a new model passes it),
and a history of every change.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

from tasks.core.errors import GenloopError
from tasks.core.storage import read_json, write_json
from tasks.registry.store import home

RECORD = "genloop-aliases.json"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def record() -> dict:
    path = home() / RECORD
    return read_json(path) if path.is_file() else {}


@contextlib.contextmanager
def _editing() -> Iterator[dict]:
    """The record, locked against other processes from read to write; written back if no error."""
    from filelock import FileLock

    path = home() / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        data = read_json(path) if path.is_file() else {}
        yield data
        write_json(path, data)


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
    with _editing() as data:
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
    with _editing() as data:
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
    with _editing() as data:
        entry = _line(data, demoted.split(":")[0])
        if entry["champion"] == restored:
            entry["previous"].append(restored)
            entry["champion"] = demoted
        entry["demoted"].pop(demoted, None)
        entry["history"].append({"at": _now(), "event": "rollback undone", "tag": demoted, "reason": reason})
