"""`genloop up` / `genloop down`: a local Prefect server, a worker, and the deployments of prefect.yaml.

State lives in .genloop/ (the server's SQLite database, pid files, logs), so the project is
self-contained; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tasks.core.errors import GenloopError

STATE = Path(".genloop")
POOL = "genloop"


def _env(port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PREFECT_HOME": str((STATE / "prefect").resolve()),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GENLOOP_PROJECT": str(Path.cwd().resolve()),
        # DVC stages call `genloop`: the worker's flow runs need this environment's commands first.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _prefect(*args: str, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GenloopError(f"prefect {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _spawn(name: str, args: list[str], env: dict) -> int:
    log = open(STATE / f"{name}.log", "ab")  # noqa: SIM115  (owned by the child from here on)
    proc = subprocess.Popen([sys.executable, "-m", "prefect", *args], env=env, stdout=log, stderr=log,
                            start_new_session=True)  # fmt: skip
    (STATE / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def up(port: int = 4200, timeout_s: float = 120) -> str:
    """Start (or reuse) the server, create the work pool, deploy prefect.yaml, start a worker."""
    if not Path("prefect.yaml").is_file():
        raise GenloopError("prefect.yaml not found: run from the project folder")
    STATE.mkdir(exist_ok=True)
    env = _env(port)
    if not _healthy(port):
        _spawn("server", ["server", "start", "--host", "127.0.0.1", "--port", str(port)], env)
        deadline = time.monotonic() + timeout_s
        while not _healthy(port):
            if time.monotonic() > deadline:
                raise GenloopError(
                    f"the Prefect server did not answer within {timeout_s:.0f} s: see {STATE}/server.log"
                )
            time.sleep(0.5)
    _prefect("work-pool", "create", POOL, "--type", "process", "--overwrite", env=env)
    _prefect("--no-prompt", "deploy", "--all", env=env)
    if not _alive(STATE / "worker.pid"):
        _spawn("worker", ["worker", "start", "--pool", POOL], env)
    return f"http://127.0.0.1:{port}"


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def down(timeout_s: float = 30) -> list[str]:
    """Stop the worker, then the server (SIGTERM, then SIGKILL after timeout_s). Returns what stopped."""
    stopped = []
    for name in ("worker", "server"):
        pid_file = STATE / f"{name}.pid"
        if not pid_file.is_file():
            continue
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                os.killpg(pid, 0)
                time.sleep(0.2)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        pid_file.unlink()
        stopped.append(name)
    return stopped
