"""A throwaway PostgreSQL cluster on loopback for tests (Debian's binaries, `make postgres`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """Start a cluster (run as Debian's `postgres` user when this is root, in a folder of its own that
    user can reach) and yield its URL (user postgres, trust on loopback); stop and remove it on exit."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bins:
        pytest.skip("Debian's postgresql is not installed (make test installs it with apt-get as root)")
    bin_dir, port = bins[-1], free_port()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="genloop-pg-"))
    if as_user:
        shutil.chown(root, "postgres")
    data = root / "data"

    def pg(*args) -> None:
        proc = subprocess.run([*as_user, *map(str, args)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{args[0]} failed: {proc.stdout}{proc.stderr}"

    try:
        pg(bin_dir / "initdb", "-D", data, "-U", "postgres", "-A", "trust")
        opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c fsync=off"
        pg(bin_dir / "pg_ctl", "-D", data, "-o", opts, "-w", "-l", root / "log", "start")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def new_database(server: str) -> str:
    """A fresh, empty database on `server` (one per test: nothing leaks from one test to the next)."""
    import psycopg

    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.rsplit("/", 1)[0] + f"/{name}"
