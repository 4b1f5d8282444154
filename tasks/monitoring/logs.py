"""What the service logged, read through one interface whatever holds it.

Each replica of the service on one machine writes its own `serving.db` (service/store.py).
`ServingLogs` reads one or many of them, read-only, as one log: the monitor gives it the files its
replicas wrote (monitor.logs: paths or glob patterns; by default the local deployment's). With
site.database set, every replica on every machine writes to PostgreSQL instead (service/shared_store.py)
and `DatabaseLogs` reads the same rows there. `open_logs` picks the one in use.
"""

from __future__ import annotations

import glob
import json
import sqlite3
from pathlib import Path

import numpy as np

COLUMNS = (
    "id, request_id, at, model, seed, position, n, label, asked, "
    "prompt_stats, prompt_embedding, stats, embedding"
)


def files(patterns: list[str], default: Path) -> list[Path]:
    """The serving.db files named by paths or glob patterns (a folder means its serving.db)."""
    found: list[Path] = []
    for pattern in patterns or [str(default)]:
        for hit in sorted(glob.glob(pattern)) or ([pattern] if not glob.has_magic(pattern) else []):
            path = Path(hit)
            path = path / "serving.db" if path.is_dir() else path
            if path.is_file() and path not in found:
                found.append(path)
    return found


class ServingLogs:
    """The served samples and ratings of several serving.db files, as one log."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        rows: list[tuple] = []
        for path in self.paths:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'samples'").fetchone():
                    rows.extend(db.execute(sql, args).fetchall())
            finally:
                db.close()
        return rows

    def samples(
        self, prefix: str, since: float | None = None, until: float | None = None, last: int | None = None
    ) -> list[dict]:
        """The samples of the model versions whose tag starts with `prefix`, served in [since, until),
        or the `last` ones before `until`: newest first. Both use the index on `at`."""
        until = until if until is not None else float("inf")
        sql = f"SELECT {COLUMNS} FROM samples WHERE at < ? AND at >= ? AND model >= ? AND model < ?"
        args: tuple = (until, since if since is not None else 0.0, prefix, prefix + "\uffff")
        sql += " ORDER BY at DESC" + (f" LIMIT {int(last)}" if last else "")
        rows = sorted(self._query(sql, args), key=lambda r: r[2], reverse=True)
        rows = rows[:last] if last else rows
        keys = COLUMNS.split(", ")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def rated(self, prefix: str) -> list[dict]:
        """Every rating of a sample of `prefix`'s versions, oldest first, with what drew the sample
        (model, seed, position, n, label, asked, prompt, temperature, length)."""
        sql = (
            "SELECT f.sample_id, f.at, f.rating, f.comment, s.model, s.seed, s.position, s.n, s.label, "
            "s.asked, s.prompt, s.temperature, s.length FROM feedback f JOIN samples s ON s.id = f.sample_id "
            "WHERE s.model >= ? AND s.model < ?"
        )
        keys = ("sample_id", "at", "rating", "comment", "model", "seed", "position", "n", "label", "asked",
                "prompt", "temperature", "length")  # fmt: skip
        rows = [dict(zip(keys, row, strict=True)) for row in self._query(sql, (prefix, prefix + "\uffff"))]
        return sorted(rows, key=lambda r: r["at"])

    def ratings(self, prefix: str, since: float, until: float) -> list[tuple[float, int]]:
        """(time, rating) of the ratings given in [since, until) to samples of `prefix`'s versions."""
        sql = "SELECT at, rating FROM feedback WHERE at >= ? AND at < ? AND model >= ? AND model < ?"
        return self._query(sql, (since, until, prefix, prefix + "\uffff"))


def arrays(
    rows: list[dict], stats: str = "stats", embedding: str = "embedding", width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The rows' (stats (N, k), embedding (N, D)) as float32; rows without them, or whose embedding is
    not `width` wide (another featurizer's), are left out."""
    kept = [r for r in rows if r.get(stats) is not None and r.get(embedding) is not None]
    if width is not None:
        kept = [r for r in kept if len(r[embedding]) == 4 * width]
    if not kept:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    s = np.array([json.loads(r[stats]) for r in kept], dtype=np.float32)
    e = np.stack([np.frombuffer(r[embedding], dtype=np.float32) for r in kept])
    return s, e


class DatabaseLogs(ServingLogs):
    """The samples and ratings every replica wrote to site.database, as one log."""

    def __init__(self, url: str) -> None:
        super().__init__([])
        self.url = url
        self._conn = None  # opened at the first query, kept for this reader's others

    def _query(self, statement: str, args: tuple) -> list[tuple]:
        from service.shared_store import connect, migrate, sql
        from tasks.core import site

        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.url)  # one connection for this reader's queries
                migrate(self._conn)  # the tables, empty, before any replica has served (a read once made)
            return [tuple(r) for r in self._conn.execute(sql(statement), args).fetchall()]
        except Exception as err:
            if type(err).__module__.startswith("psycopg"):
                raise site.unreachable(self.url, err) from None
            raise


def open_logs(patterns: list[str], default: Path) -> ServingLogs:
    """The service's log in use: site.database when it is set, else the serving.db files named by
    `patterns` (monitor.logs; [] means the local deployment's, `default`)."""
    from tasks.core import site

    url = site.current().database
    return DatabaseLogs(url) if url else ServingLogs(files(patterns, default))
