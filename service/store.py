"""Durable records of the service: feedback, and a log of requests and of each sample served, in one
SQLite file.

Feedback is a committed transaction with synchronous=FULL in WAL mode before its answer: killing the
server right after an acknowledged rating loses nothing. The log of requests and samples is written off
the request path: a writer thread commits whatever has queued in one transaction (a group commit, one
fsync for many requests), a rating first commits the log it may refer to, and `close()` (the service's
shutdown, on SIGTERM) writes what is left, so only a hard kill can lose the last few milliseconds of
log. The drift monitor and the retrain flow read the same file, `$GENLOOP_SERVING_DIR/serving.db`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
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


WRITE_EVERY_S = 0.05  # the log's group commit: at most this much later on disk than the answer
LOG = logging.getLogger("genloop.serving")


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
    def __init__(self, folder: Path | None = None, featurize: Callable[[list], tuple] | None = None) -> None:
        """`featurize`: (stats, embedding) of a list of samples as the model wrote them, for samples
        logged with `written` instead of their features: computed by the writer, for many at once."""
        self.lock = threading.Lock()
        self._open(folder)
        # the log waiting for the writer; taken only with `lock` held too, so a rating (which holds it)
        # finds every request logged before it either committed or in what it takes
        self.featurize = featurize
        self.pending: dict[str, int] = {}  # request id -> samples, logged but not yet committed
        self.buffer: list[tuple] = []
        self.buffer_lock = threading.Lock()
        self.wake = threading.Event()
        self.closing = threading.Event()
        self.writer = threading.Thread(target=self._write_log, name="serving-log", daemon=True)
        self.writer.start()

    def _open(self, folder: Path | None) -> None:
        folder = folder or default_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "serving.db"
        # users' comments and what they asked for: readable by the service's user only (SQLite gives
        # its -wal and -shm files the database file's permissions)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(self.path, 0o600)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # fsync at each commit: durable once we answer
        migrate(self.db)

    # the database's own calls: SQLite here, PostgreSQL in service/shared_store.py
    def _transaction(self) -> contextlib.AbstractContextManager:
        return transaction(self.db)

    def _execute(self, sql: str, args: tuple) -> None:
        self.db.execute(sql, args)

    def _executemany(self, sql: str, rows: list[tuple]) -> None:
        self.db.executemany(sql, rows)

    def _fetchone(self, sql: str, args: tuple) -> tuple | None:
        return self.db.execute(sql, args).fetchone()

    def log_request(
        self, request_id: str, model: str, req: dict, latency_ms: float, samples: list[dict]
    ) -> None:
        """The request and a row per sample, committed together shortly after (off the request path).
        `req` holds the seed actually used; each sample holds its class (and whether it was asked for)
        or its prompt (`prompt_text`, for its features; `prompt`, kept with serve.log_prompts), and
        its own (stats, embedding) from models/features.py, or `written` for `featurize` to compute
        them. With the model version, the row says how to draw the sample again."""
        with self.buffer_lock:
            self.pending[request_id] = len(samples)
            self.buffer.append((request_id, time.time(), model, req, latency_ms, samples))
        self.wake.set()

    def _take(self) -> list[tuple]:
        with self.buffer_lock:
            rows, self.buffer = self.buffer, []
            self.wake.clear()
        return rows

    def _write_log(self) -> None:
        """The writer thread: everything queued, one transaction at a time, until `close()`. It pauses
        between writes, so that rows come in groups (one fsync, one featurizer call for many)."""
        failures = 0
        while True:
            self.wake.wait()
            try:
                self.flush()
                failures = 0
            except Exception:  # a locked or full disk, a failing featurizer: kept, tried again
                failures += 1
                LOG.exception("writing the request log failed (%d in a row); kept to try again", failures)
                if self.closing.is_set() and failures >= 3:
                    LOG.error("stopping: %d requests' log could not be written", len(self.pending))
                    return
            if self.closing.is_set() and not self.buffer:
                return
            self.closing.wait(WRITE_EVERY_S if not failures else min(30.0, 2.0**failures))

    def _write_rows(self, rows: list[tuple], then: tuple | None = None) -> None:
        """Queued log rows, and `then` (a feedback row), in one transaction (the caller holds `lock`)."""
        if not rows and then is None:
            return
        try:
            self._featurize([s for row in rows for s in row[5]])
            with self._transaction():
                for row in rows:
                    self._insert(*row)
                if then is not None:
                    self._execute("INSERT INTO feedback VALUES (?,?,?,?,?)", then)
        except BaseException:  # nothing was written: the rows go back, first in line, for the writer
            with self.buffer_lock:
                self.buffer[:0] = rows
            self.wake.set()
            raise
        with self.buffer_lock:
            for row in rows:
                self.pending.pop(row[0], None)

    def _featurize(self, samples: list[dict]) -> None:
        """Features of the samples logged raw, and of their prompts, for the whole group at once."""
        raw = [s for s in samples if "written" in s]
        if raw and self.featurize is not None:
            stats, embedding = self.featurize([s["written"] for s in raw])
            for s, st, emb in zip(raw, stats, embedding, strict=True):
                s["stats"], s["embedding"] = st, emb
                del s["written"]  # only once computed: a failed group is featurized again
        prompted = [s for s in samples if "prompt_text" in s]
        if prompted:
            from models.features import text_features

            stats, embedding = text_features([s["prompt_text"] for s in prompted])
            for s, st, emb in zip(prompted, stats, embedding, strict=True):
                s["prompt_stats"], s["prompt_embedding"] = st, emb
                del s["prompt_text"]

    def flush(self) -> None:
        """Commit the log queued so far (readers in this process see it afterwards)."""
        with self.lock:
            self._write_rows(self._take())

    def _insert(
        self, request_id: str, now: float, model: str, req: dict, latency_ms: float, samples: list[dict]
    ) -> None:
        import numpy as np

        ids = [s["id"] for s in samples]
        self._execute(
            "INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                request_id, now, model, req.get("n"), req.get("seed"),
                None if req.get("label") is None else str(req["label"]),
                len(req.get("prompt") or ""), req.get("temperature"), req.get("length"),
                latency_ms, "{}", json.dumps(ids),
            ),
        )  # fmt: skip
        self._executemany(
            "INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    s["id"], request_id, now, model, req["seed"], i, len(samples), s.get("label"),
                    int(bool(s.get("asked"))), s.get("prompt"),
                    _json(s.get("prompt_stats")),
                    _blob(s.get("prompt_embedding"), np), req.get("temperature"), req.get("length"),
                    _json(s["stats"]), _blob(s["embedding"], np), latency_ms,
                )
                for i, s in enumerate(samples)
            ],
        )  # fmt: skip

    def known_sample(self, sample_id: str) -> bool:
        """Sample ids are `<request id>-<index>`: one primary-key lookup, however long the log."""
        request_id, _, index = sample_id.rpartition("-")
        if not index.isdigit():
            return False
        n = self.pending.get(request_id)  # popped only once committed: absent means on disk or unknown
        if n is None:
            with self.lock:
                row = self._fetchone("SELECT n FROM requests WHERE id = ?", (request_id,))
            n = row and row[0]
        return n is not None and int(index) < n

    def add_feedback(self, sample_id: str, rating: int, comment: str, model: str) -> None:
        """Committed before it returns, together with the log still queued (which it may refer to)."""
        with self.lock:
            self._write_rows(self._take(), then=(sample_id, time.time(), rating, comment, model))

    def close(self) -> None:
        """Write what is queued and stop the writer (the service's shutdown: SIGTERM loses no log)."""
        self.closing.set()
        self.wake.set()
        self.writer.join()


def _json(values) -> str | None:
    """Statistics (a list or a numpy row) as a JSON list."""
    return None if values is None else json.dumps([float(v) for v in values])


def _blob(vector, np) -> bytes | None:
    """An embedding as float32 bytes: a quarter of its JSON, read back with np.frombuffer."""
    return None if vector is None else np.asarray(vector, dtype=np.float32).tobytes()


def usage(path: Path, recent_s: float = 86_400.0) -> dict:
    """How the service has been used, from its records (read-only): requests, samples and ratings in all
    and in the last `recent_s` seconds, and per model version its requests, ratings and mean rating."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return usage_of(lambda sql, args: db.execute(sql, args).fetchall(), recent_s)
    finally:
        db.close()


def usage_of(query: Callable[..., list], recent_s: float = 86_400.0) -> dict:
    """`usage` through `query(sql, args)`, whichever database answers it."""
    since = time.time() - recent_s
    ((requests, samples, recent),) = query(
        "SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(SUM(CASE WHEN at >= ? THEN 1 ELSE 0 END), 0) "
        "FROM requests",
        (since,),
    )
    ((ratings, rated_recently),) = query(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN at >= ? THEN 1 ELSE 0 END), 0) FROM feedback", (since,)
    )
    per_model: dict[str, dict] = {}
    for model, n in query("SELECT model, COUNT(*) FROM requests GROUP BY model", ()):
        per_model[model] = {"requests": n, "ratings": 0, "mean_rating": None}
    for model, n, mean in query("SELECT model, COUNT(*), AVG(rating) FROM feedback GROUP BY model", ()):
        per_model.setdefault(model, {"requests": 0})
        per_model[model] |= {"ratings": n, "mean_rating": None if mean is None else float(mean)}
    return {
        "requests": requests,
        "requests_recent": recent,
        "samples": samples,
        "ratings": ratings,
        "ratings_recent": rated_recently,
        "per_model": per_model,
    }


def open_store(featurize: Callable[[list], tuple] | None = None) -> Store:
    """The service's store: PostgreSQL shared by every replica when GENLOOP_SITE_DATABASE is set (the
    site's database, passed by `genloop deploy`), else this deployment's serving.db."""
    url = os.environ.get("GENLOOP_SITE_DATABASE")
    if url:
        from service.shared_store import SharedStore

        return SharedStore(url, featurize=featurize)
    return Store(featurize=featurize)
