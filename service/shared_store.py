"""The service's log and ratings in PostgreSQL (site.database), shared by every replica on every machine.

The same tables and the same writes as serving.db (service/store.py): the log of requests and samples
group-committed off the request path, a rating committed before its answer together with the log it
may refer to. Because every replica writes to the same tables, a rating sent to a replica that did not
serve the sample finds it, and the drift monitor's window covers every replica. The tables live in
their own schema (`genloop_log`), made by the same migrations as the SQLite file, with PostgreSQL's
types; a commit is durable when PostgreSQL answers (synchronous_commit, its default).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from service.store import MIGRATIONS, Store

SCHEMA = "genloop_log"
CONNECT_TIMEOUT_S = 10


def ddl(statement: str) -> str:
    """A migration of service/store.py in PostgreSQL's types: 64-bit integers as SQLite's, float8 for
    REAL, bytea for BLOB, and model tags compared byte by byte (the readers select a line's versions by
    a range of tags)."""
    statement = re.sub(r"\bINTEGER\b", "BIGINT", statement)
    statement = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)
    statement = re.sub(r"\bBLOB\b", "BYTEA", statement)
    return re.sub(r"\bmodel TEXT\b", 'model TEXT COLLATE "C"', statement)


def sql(statement: str) -> str:
    """SQLite's `?` placeholders as psycopg's `%s`."""
    return statement.replace("?", "%s")


def connect(url: str):
    """A connection whose tables are genloop's (its own schema first on the search path)."""
    import psycopg

    url = url.replace("postgresql+psycopg://", "postgresql://", 1)
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
        options=f"-c search_path={SCHEMA}",
        application_name="genloop-service",
    )


def schema_version(conn) -> int:
    """The schema's version (0: none yet), read without a lock or any DDL."""
    with conn.transaction():
        if conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.version",)).fetchone()[0] is None:
            return 0
        row = conn.execute(f"SELECT version FROM {SCHEMA}.version").fetchone()
    return row[0] if row else 0


def migrate(conn) -> int:
    """Bring the schema to the newest version under an advisory lock (replicas start at once); returns
    the version it found. A schema already up to date costs one read: no lock, no DDL (a reader's role
    needs no CREATE privilege)."""
    found = schema_version(conn)
    if found >= len(MIGRATIONS):
        return found
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (SCHEMA,))
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.version (version INTEGER NOT NULL)")
        row = conn.execute(f"SELECT version FROM {SCHEMA}.version").fetchone()
        found = row[0] if row else 0
        if row is None:
            conn.execute(f"INSERT INTO {SCHEMA}.version VALUES (0)")
        for version in range(found, len(MIGRATIONS)):
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(ddl(statement))
            conn.execute(f"UPDATE {SCHEMA}.version SET version = %s", (version + 1,))
    return found


class SharedStore(Store):
    def __init__(self, url: str, featurize: Callable[[list], tuple] | None = None) -> None:
        self.url = url
        super().__init__(None, featurize)

    def _open(self, folder: Path | None) -> None:
        self.path = None
        self.db = connect(self.url)
        migrate(self.db)

    def _connection(self):
        """The connection, opened again if the server closed it (a restart): the writer retries."""
        if self.db.closed or self.db.broken:
            self.db = connect(self.url)
        return self.db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._connection().transaction():
            yield

    def _execute(self, statement: str, args: tuple) -> None:
        self._connection().execute(sql(statement), args)

    def _executemany(self, statement: str, rows: list[tuple]) -> None:
        with self._connection().cursor() as cur:
            cur.executemany(sql(statement), rows)

    def _fetchone(self, statement: str, args: tuple) -> tuple | None:
        return self._connection().execute(sql(statement), args).fetchone()
