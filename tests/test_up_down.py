"""`genloop down` without servers: it signals only what `genloop up` started (unit, no Prefect)."""

from __future__ import annotations

import subprocess
import sys

from genloop import server


def test_down_leaves_alone_a_process_that_took_over_a_stale_pid(tmp_path, monkeypatch):
    """A pid file that outlived its worker names a pid the system may have given to anyone: that
    process is not signalled, and the stale file is removed."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".genloop").mkdir()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (tmp_path / ".genloop/worker.pid").write_text(f"{stranger.pid}\n")
        assert not server._alive(tmp_path / ".genloop/worker.pid")
        assert server.down() == []
        assert stranger.poll() is None  # still running: not ours to stop
        assert not (tmp_path / ".genloop/worker.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_make_up_takes_the_port():
    from tests.conftest import REPO

    said = subprocess.run(["make", "-n", "up", "PORT=4300"], cwd=REPO, capture_output=True, text=True).stdout
    assert "genloop up --port 4300" in said, said
