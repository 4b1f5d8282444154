"""`genloop up` / `genloop down`: a Prefect server, a worker, and the deployments of prefect.yaml;
`genloop worker`: a worker of the pool on any machine, with checkouts of its own (genloop/steps.py).

State lives in .genloop/ (the server's SQLite database, pid files, logs), so the project is
self-contained. The server listens on 127.0.0.1 unless told otherwise, and on any other address only
with Prefect's API auth (PREFECT_SERVER_API_AUTH_STRING): a server other machines reach is never open.
The database is Prefect's to choose: PREFECT_API_DATABASE_CONNECTION_URL (postgresql+asyncpg://...)
puts it in PostgreSQL.

The server is started here rather than by `prefect server start --background`, whose output goes to a
pipe of the command that exits: with an unreachable database it says the server is running, exits 0,
and the server dies with its reason lost. Here its output is .genloop/server.log, `up` waits for its
health, and `down` signals only a process that is still the one it started.
"""

from __future__ import annotations

import ipaddress
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
# The deployments' runs send Prefect's heartbeat every HEARTBEAT_S (prefect.yaml passes it on, so on any
# worker); a run three heartbeats late belongs to a worker that died with it, and an automation marks it
# Crashed, so that it can be run again elsewhere. Only these deployments' runs are watched: a run of
# another project keeps Prefect's own (180 s) heartbeat, and a `genloop flow` run outside a deployment
# sends none unless asked (genloop/cli.py).
HEARTBEAT_S = 30  # Prefect's least
CRASH_AUTOMATION = "genloop: a silent flow run crashed"


def crash_automation(deployments: list[str]) -> dict:
    """The automation that marks a run of these deployments (their ids) Crashed when its heartbeat stops."""
    return {
        "name": CRASH_AUTOMATION,
        "description": "a run whose heartbeat stopped (its worker or machine died) is marked Crashed",
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            "after": ["prefect.flow-run.heartbeat"],
            "expect": ["prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in
                       ("Completed", "Failed", "Cancelled", "Crashed"))],
            "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "match_related": {"prefect.resource.role": "deployment",
                              "prefect.resource.id": [f"prefect.deployment.{d}" for d in deployments]},
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": 3 * HEARTBEAT_S,
        },
        "actions": [{"type": "change-flow-run-state", "state": "CRASHED",
                     "message": f"no heartbeat for {3 * HEARTBEAT_S} s: its worker died"}],
    }  # fmt: skip


def sync_crash_automation(pool: str = POOL) -> None:
    """Make the crash automation watch every deployment of the pool (once, replacing an older one).
    Run in a process with the server's PREFECT_API_URL (genloop up)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
    from prefect.events.schemas.automations import AutomationCore

    async def sync() -> None:
        async with get_client() as client:
            pools = WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
            ids = [str(d.id) for d in await client.read_deployments(work_pool_filter=pools)]
            for old in await client.read_automations_by_name(CRASH_AUTOMATION):
                await client.delete_automation(old.id)
            await client.create_automation(AutomationCore.model_validate(crash_automation(ids)))

    asyncio.run(sync())


AUTH = "PREFECT_SERVER_API_AUTH_STRING"  # the server's user:password; clients send PREFECT_API_AUTH_STRING


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: other machines may resolve it
        return False


def deployed_code() -> tuple[str, str]:
    """What workers without this folder check out: the repository (its origin, else this folder) and
    the commit checked out here (the one a model's lineage records)."""
    from tasks.registry.lineage import git

    proc = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True)
    origin = proc.stdout.strip() if proc.returncode == 0 else ""
    return origin or str(Path.cwd().resolve()), git()["commit"] or ""


def uncommitted() -> bool:
    """Whether tracked files differ from the commit workers elsewhere check out."""
    from tasks.registry.lineage import git

    return bool(git()["dirty"])


def _env(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    repository, commit = deployed_code()
    env = {
        **os.environ,
        "PREFECT_HOME": str((STATE / "prefect").resolve()),
        "PREFECT_API_URL": f"http://{_reach(host)}:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),
        "GENLOOP_HEARTBEAT_S": str(HEARTBEAT_S),  # prefect.yaml gives it to every run of its deployments
        # the worker beside its own server asks for runs every 2 s, not Prefect's 10: a Run clicked in
        # the UI, or a retrain the monitor's event started, begins at once (a setting of yours wins)
        "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "2"),
        "GENLOOP_PROJECT": str(Path.cwd().resolve()),
        "GENLOOP_REPOSITORY": repository,
        "GENLOOP_COMMIT": commit,
        # DVC stages call `genloop`: the worker's flow runs need this environment's commands first.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if os.environ.get(AUTH):
        env.setdefault("PREFECT_API_AUTH_STRING", os.environ[AUTH])
    return env


def _prefect(*args: str, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GenloopError(f"prefect {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def _reach(host: str) -> str:
    """The address this machine reaches a server listening on `host` at."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _healthy(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with urllib.request.urlopen(f"http://{_reach(host)}:{port}/api/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _spawn(name: str, args: list[str], env: dict) -> int:
    log = open(STATE / f"{name}.log", "ab")  # noqa: SIM115  (owned by the child from here on)
    proc = subprocess.Popen([sys.executable, "-m", "prefect", *args], env=env, stdout=log, stderr=log,
                            start_new_session=True)  # fmt: skip
    (STATE / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def up(port: int = 4200, host: str = "127.0.0.1", worker: bool = True, timeout_s: float = 120) -> str:
    """Start (or reuse) the server, create the work pool, deploy prefect.yaml, start a worker here
    (`worker`), and the automation that marks a flow run Crashed when its heartbeat stops."""
    if not Path("prefect.yaml").is_file():
        raise GenloopError("prefect.yaml not found: run from the project folder")
    if not _loopback(host) and not os.environ.get(AUTH):
        raise GenloopError(
            f"a server on {host} is reachable from other machines: set {AUTH}=user:password first "
            "(workers and clients send it as PREFECT_API_AUTH_STRING)"
        )
    STATE.mkdir(exist_ok=True)
    env = _env(port, host)
    if not _healthy(port, host):
        _spawn("server", ["server", "start", "--host", host, "--port", str(port)], env)
        deadline = time.monotonic() + timeout_s
        while not _healthy(port, host):
            if time.monotonic() > deadline:
                raise GenloopError(
                    f"the Prefect server did not answer within {timeout_s:.0f} s: see {STATE}/server.log"
                )
            time.sleep(0.5)
    _prefect("work-pool", "create", POOL, "--type", "process", "--overwrite", env=env)
    _prefect("--no-prompt", "deploy", "--all", env=env)
    sync = "from genloop.server import sync_crash_automation; sync_crash_automation()"
    proc = subprocess.run([sys.executable, "-c", sync], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GenloopError(f"the crash automation could not be made:\n{proc.stderr[-2000:]}")
    if worker and not _alive(STATE / "worker.pid"):
        # one flow run at a time: this folder is one checkout, whose DVC stages must not interleave
        _spawn("worker", ["worker", "start", "--pool", POOL, "--limit", "1"], env)
    return f"http://{_reach(host)}:{port}"


def worker(api: str, folder: Path, pool: str = POOL, name: str | None = None, limit: int = 1) -> None:
    """Become a Prefect worker of `pool` on the server at `api` (this process is replaced; Ctrl-C or
    SIGTERM stops it). Its flow runs work in checkouts under `folder` (genloop/steps.py); the server's
    auth string, the site (GENLOOP_SITE_REMOTE, GENLOOP_SITE_DATABASE) and S3's credentials come from
    this environment. `limit` flow runs at a time: one keeps the checkout's stages serial."""
    from genloop.steps import WORKER_HOME

    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_API_URL": api.rstrip("/") if api.rstrip("/").endswith("/api") else api.rstrip("/") + "/api",
        "PREFECT_HOME": str(folder / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),
        WORKER_HOME: str(folder),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("GENLOOP_PROJECT", None)
    args = ["worker", "start", "--pool", pool, "--limit", str(limit), *(["--name", name] if name else [])]
    os.chdir(folder)
    os.execve(sys.executable, [sys.executable, "-m", "prefect", *args], env)


def _alive(pid_file: Path) -> bool:
    try:
        return _ours(int(pid_file.read_text()), pid_file.stem)
    except (OSError, ValueError):
        return False


def _ours(pid: int, name: str) -> bool:
    """Whether `pid` is still the `prefect server`/`prefect worker` that _spawn started from here."""
    import psutil

    try:
        return psutil.Process(pid).cmdline()[1:4] == ["-m", "prefect", name] and os.getpgid(pid) == pid
    except (psutil.Error, OSError):  # gone meanwhile
        return False


def down(timeout_s: float = 30) -> list[str]:
    """Stop the worker, then the server (SIGTERM, then SIGKILL after timeout_s). Returns what stopped."""
    stopped = []
    for name in ("worker", "server"):
        pid_file = STATE / f"{name}.pid"
        if not pid_file.is_file():
            continue
        pid = int(pid_file.read_text())
        if not _ours(pid, name):  # a pid file outliving its process: that pid may be anyone's now
            pid_file.unlink()
            continue
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
