"""Durable records of the service: feedback, and a log of requests and of each sample served, in one
SQLite file.

Each write is a committed transaction with synchronous=FULL in WAL mode, so a 200 is only sent after
the row is on disk: killing the server right after loses nothing. The drift monitor and the retrain
flow read the same file, `$GENLOOP_SERVING_DIR/serving.db`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

# Version 0: requests and feedback. Version 1 adds a row per served sample (what the drift monitor reads)
# and indexes for its windows; each migration only adds, so the rows of older versions stay.
MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS requests (
        id TEXT PRIMARY KEY, at REAL NOT NULL, model TEXT NOT NULL, n INTEGER, seed INTEGER,
        label TEXT, prompt_chars INTEGER, temperature REAL, length INTEGER, latency_ms REAL,
        features TEXT NOT NULL, sample_ids TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS feedback (
        sample_id TEXT NOT NULL, at REAL NOT NULL, rating INTEGER NOT NULL, comment TEXT NOT NULL,
        model TEXT NOT NULL
    );
    """,
    """
    CREATE TABLE IF NOT EXISTS samples (
        id TEXT PRIMARY KEY, request_id TEXT NOT NULL, at REAL NOT NULL, model TEXT NOT NULL,
        seed INTEGER NOT NULL, position INTEGER NOT NULL, n INTEGER NOT NULL, label TEXT,
        asked INTEGER NOT NULL, prompt TEXT, prompt_stats TEXT, prompt_embedding BLOB,
        temperature REAL, length INTEGER,
        stats TEXT NOT NULL, embedding BLOB NOT NULL, latency_ms REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS samples_at ON samples (at);
    CREATE INDEX IF NOT EXISTS feedback_at ON feedback (at);
    CREATE INDEX IF NOT EXISTS feedback_sample ON feedback (sample_id);
    """,
)


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE (the write lock at once, not at the first write) ... COMMIT, or ROLLBACK."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def migrate(db: sqlite3.Connection) -> int:
    """Bring the file to the newest schema, one transaction per step (PRAGMA user_version counts
    them). Returns the version it found."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    for version in range(found, len(MIGRATIONS)):
        with transaction(db):
            if db.execute("PRAGMA user_version").fetchone()[0] == version:  # not done by another process
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {version + 1}")
    return found


def default_dir() -> Path:
    """`genloop deploy` sets GENLOOP_SERVING_DIR (.genloop/serving in the project); a bare `bentoml
    serve` writes beside the model store instead (BentoML runs a Bento from inside its own folder)."""
    if os.environ.get("GENLOOP_SERVING_DIR"):
        return Path(os.environ["GENLOOP_SERVING_DIR"]).resolve()
    return Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")) / "genloop-serving"


class Store:
    def __init__(self, folder: Path | None = None) -> None:
        folder = folder or default_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "serving.db"
        # users' comments and what they asked for: readable by the service's user only (SQLite gives
        # its -wal and -shm files the database file's permissions)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(self.path, 0o600)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # fsync at each commit: durable once we answer
        migrate(self.db)

    def _write(self, sql: str, row: tuple) -> None:
        with self.lock, transaction(self.db):
            self.db.execute(sql, row)

    def log_request(
        self, request_id: str, model: str, req: dict, latency_ms: float, samples: list[dict]
    ) -> None:
        """The request and a row per sample, in one transaction. `req` holds the seed actually used; each
        sample holds its class (and whether it was asked for) or its prompt's features, and its own
        (stats, embedding) from models/features.py. With the model version, the row says how to draw
        the sample again (a text sample needs its prompt too: kept with serve.log_prompts)."""
        import numpy as np

        now = time.time()
        ids = [s["id"] for s in samples]
        with self.lock, transaction(self.db):
            self.db.execute(
                "INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    request_id, now, model, req.get("n"), req.get("seed"),
                    None if req.get("label") is None else str(req["label"]),
                    len(req.get("prompt") or ""), req.get("temperature"), req.get("length"),
                    latency_ms, "{}", json.dumps(ids),
                ),
            )  # fmt: skip
            self.db.executemany(
                "INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        s["id"], request_id, now, model, req["seed"], i, len(samples), s.get("label"),
                        int(bool(s.get("asked"))), s.get("prompt"),
                        json.dumps(s["prompt_stats"]) if s.get("prompt_stats") else None,
                        _blob(s.get("prompt_embedding"), np), req.get("temperature"), req.get("length"),
                        json.dumps(s["stats"]), _blob(s["embedding"], np), latency_ms,
                    )
                    for i, s in enumerate(samples)
                ],
            )  # fmt: skip

    def known_sample(self, sample_id: str) -> bool:
        """Sample ids are `<request id>-<index>`: one primary-key lookup, however long the log."""
        request_id, _, index = sample_id.rpartition("-")
        if not index.isdigit():
            return False
        with self.lock:
            row = self.db.execute("SELECT n FROM requests WHERE id = ?", (request_id,)).fetchone()
        return row is not None and int(index) < row[0]

    def add_feedback(self, sample_id: str, rating: int, comment: str, model: str) -> None:
        self._write(
            "INSERT INTO feedback VALUES (?,?,?,?,?)", (sample_id, time.time(), rating, comment, model)
        )


def _blob(vector, np) -> bytes | None:
    """An embedding as float32 bytes: a quarter of its JSON, read back with np.frombuffer."""
    return None if vector is None else np.asarray(vector, dtype=np.float32).tobytes()


def usage(path: Path, recent_s: float = 86_400.0) -> dict:
    """How the service has been used, from its records (read-only): requests, samples and ratings in all
    and in the last `recent_s` seconds, and per model version its requests, ratings and mean rating."""
    since = time.time() - recent_s
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        requests, samples, recent = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(SUM(at >= ?), 0) FROM requests", (since,)
        ).fetchone()
        ratings, rated_recently = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(at >= ?), 0) FROM feedback", (since,)
        ).fetchone()
        per_model: dict[str, dict] = {}
        for model, n in db.execute("SELECT model, COUNT(*) FROM requests GROUP BY model"):
            per_model[model] = {"requests": n, "ratings": 0, "mean_rating": None}
        for model, n, mean in db.execute("SELECT model, COUNT(*), AVG(rating) FROM feedback GROUP BY model"):
            per_model.setdefault(model, {"requests": 0})
            per_model[model] |= {"ratings": n, "mean_rating": mean}
    finally:
        db.close()
    return {
        "requests": requests,
        "requests_recent": recent,
        "samples": samples,
        "ratings": ratings,
        "ratings_recent": rated_recently,
        "per_model": per_model,
    }
