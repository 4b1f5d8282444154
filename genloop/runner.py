"""A warm runner for `genloop stage` and `genloop flow`: a process that has imported the stages' and the
flows' libraries once and forks a child for each command, so a stage starts its own work in a fraction of
a second instead of after 3-8 s of imports (torch, Lightning, Great Expectations, torchmetrics), and a flow
without the 1.5 s of Prefect's (bench/startup.py measures both ways).

How a stage (or a flow) runs through it:
- `genloop stage <name>` (the client, which imports nothing heavy) connects to the runner's Unix socket,
  sends its arguments, working folder, environment and umask, and hands over its stdin, stdout and
  stderr (SCM_RIGHTS), so the stage writes to the same terminal, pipe or log as it would itself.
- The runner forks a child, which takes those, starts a session of its own, and runs the same CLI
  in-process; its exit status goes back to the client, which exits with it.
- A signal to the client (Ctrl+C, a Prefect cancellation's SIGTERM) is passed on to the child. If the
  client dies, even by SIGKILL (a flow run's process tree killed), its end of the socket closes and the
  child kills its whole process group at once: a stage, or a flow and the stages it started, never
  outlives the command that started it.

What is shared and what is not: the runner imports third-party libraries only, never genloop's own
modules, so each stage imports the project's code fresh, edits included. It serves only clients whose
Python, installed packages, runner code and environment (but for the variables a stage reads when it
runs: DVC's, Prefect's, BentoML's, AWS's, genloop's own, the thread counts, PATH) are those it was
started with; any other client starts a runner of its own. The first stage or flow without a runner
starts one in the background and runs in-process as before; a runner exits after GENLOOP_RUNNER_IDLE_S
(default 600) seconds without a command, or at `genloop runner stop`. Its socket, lock and log are in
GENLOOP_RUNNER_DIR (default $XDG_RUNTIME_DIR/genloop/runner, else $TMPDIR/genloop-<uid>/runner: a
folder only this user may enter, and a client talks only to a runner of its own user). It forks only
while it is a single Python thread, never having started a math library's thread pool or CUDA. Linux
only; GENLOOP_RUNNER=0 turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

# The libraries the stages and flows import (measured with -X importtime), loaded once by the runner.
PRELOAD = (
    "numpy",
    "yaml",
    "pydantic",
    "typer",
    "rich.console",
    "PIL.Image",
    "pandas",
    "scipy.stats",
    "scipy.ndimage",
    "sklearn.mixture",
    "torch",
    "pytorch_lightning",
    "torchmetrics",
    "safetensors.torch",
    "dvclive",
    "dvc.repo",
    "s3fs",
    "great_expectations",
    # the flows': Prefect reads its settings and sets up its logging when imported, with the runner's
    # environment; a flow's child reads them again from its client's (_prefect_from_client). A stage's
    # child keeps the runner's: no stage talks to Prefect
    "prefect",
    "prefect.flow_engine",
    "prefect.task_engine",
)
# Variables a stage reads when it runs, not when a library is imported (Prefect's, which it reads
# when imported, a flow's child reads again): they may differ between clients of one runner (each
# child takes its client's whole environment).
PER_CALL = ("DVC_", "PREFECT_", "BENTOML_", "AWS_", "GENLOOP_", "PYTEST_", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PATH", "PWD", "OLDPWD", "SHLVL", "_",
            "COLUMNS", "LINES", "TERM", "SSH_", "XDG_SESSION", "DISPLAY",
            # a DDP rank's (Lightning starts each rank as `genloop stage train` again); CUDA reads its
            # devices when it starts, in the stage, not when torch is imported
            "LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PL_",
            "CUDA_VISIBLE_DEVICES")  # fmt: skip
IDLE_S = float(os.environ.get("GENLOOP_RUNNER_IDLE_S", "600"))
CONNECT_TIMEOUT_S = 5.0


def enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("GENLOOP_RUNNER", "1") not in ("0", "false")


def folder() -> Path:
    """Where runners keep their sockets, locks and logs: GENLOOP_RUNNER_DIR, or one per user (only the
    user may enter it: a client hands its environment and terminal to whoever listens there)."""
    from models.cores import private_dir

    return private_dir(os.environ.get("GENLOOP_RUNNER_DIR") or "runner")


def _per_call(key: str) -> bool:
    return any(key == p or (p.endswith("_") and key.startswith(p)) for p in PER_CALL)


def fingerprint(env: dict[str, str] | None = None) -> str:
    """What a runner must share with its clients: the interpreter, the installed packages (their
    folders' modification times), this file, and the environment but for the per-call variables."""
    env = dict(os.environ if env is None else env)
    sites = sorted(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
    blob = {
        "python": [sys.executable, sys.version],
        "sites": [(p, os.stat(p).st_mtime_ns) for p in sites],
        "runner": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "env": sorted((k, v) for k, v in env.items() if not _per_call(k)),
    }
    return hashlib.sha256(json.dumps(blob).encode()).hexdigest()[:20]


def _send(conn: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    frame = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(conn, [frame], fds)
    else:
        conn.sendall(frame)


def _recv_exactly(conn: socket.socket, n: int, fds: list[int] | None = None) -> bytes:
    buf = b""
    while len(buf) < n:
        if fds is not None and not buf:
            chunk, got, _, _ = socket.recv_fds(conn, n - len(buf), 8)
            fds.extend(got)
        else:
            chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _recv(conn: socket.socket, fds: list[int] | None = None) -> dict:
    (size,) = struct.unpack("!I", _recv_exactly(conn, 4, fds))
    return json.loads(_recv_exactly(conn, size))


# ---- the client: `genloop stage ...` ----------------------------------------------------------------


def forward(argv: list[str]) -> int | None:
    """Run `genloop <argv>` in a warm runner's child; its exit status, or None when no runner could take
    it (then the caller runs it in-process, and a runner is started for the next stage)."""
    if not enabled():
        return None
    fp = fingerprint()
    path = folder() / f"{fp}.sock"
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(CONNECT_TIMEOUT_S)
    try:
        conn.connect(str(path))
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid != os.getuid():
            raise OSError(f"{path} is served by uid {uid}, not this user")
        umask = os.umask(0)
        os.umask(umask)
        request = {"argv0": os.path.abspath(sys.argv[0]), "argv": argv, "cwd": os.getcwd(),
                   "env": dict(os.environ), "umask": umask}  # fmt: skip
        _send(conn, request, [0, 1, 2])
        answer = _recv(conn)
    except (OSError, EOFError, ValueError):
        conn.close()
        start(fp)
        return None
    if "fallback" in answer:  # the runner could not fork safely; it says why in its log
        conn.close()
        return None
    conn.settimeout(None)
    return _wait(conn, answer["pid"])


def _wait(conn: socket.socket, pid: int) -> int:
    """Pass signals on to the stage's process until its exit status arrives."""

    def pass_on(signum, frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            if signum in (signal.SIGINT, signal.SIGQUIT):  # a terminal's: to the whole group, as it would
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, pass_on)
    while True:
        try:
            answer = _recv(conn)
        except InterruptedError:
            continue
        except (EOFError, OSError):
            sys.stderr.write("error: the stage's process ended without an exit status (killed?)\n")
            return 1
        if "exit" in answer:
            return int(answer["exit"])


def start(fp: str) -> None:
    """Start a runner for this environment in the background, unless one is starting already."""
    import fcntl
    import subprocess

    lock = folder() / f"{fp}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live runner (starting or serving)
    except OSError:
        os.close(fd)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    log = open(folder() / f"{fp}.log", "ab")  # noqa: SIM115  (the runner's from here on)
    subprocess.Popen(
        [sys.executable, "-m", "genloop.runner", fp],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        cwd="/",
        start_new_session=True,  # not in the client's process group: it outlives the command
    )
    log.close()


# ---- the runner ---------------------------------------------------------------------------------------


def serve(fp: str) -> None:
    import fcntl
    import selectors
    import threading

    lock_fd = os.open(folder() / f"{fp}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another runner for this environment won the race
    os.set_inheritable(lock_fd, False)
    if fingerprint() != fp:
        print(f"runner {fp}: started in another environment; not serving", flush=True)
        return
    # Libraries must not start thread pools here: a fork keeps only the forking thread. The child's
    # claim on the cores (models/cores.py) sets its real thread counts.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    sys.path[0] = os.path.dirname(sys.executable)  # as for the `genloop` command, not this folder
    started = time.monotonic()
    import importlib
    import logging

    root = logging.getLogger()
    for name in PRELOAD:
        if name == "prefect":  # what the root logger had before Prefect set up its logging
            handlers, level = list(root.handlers), root.level
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    # A stage's child keeps the root logger as it would be alone (Prefect's own loggers stay set up,
    # unused by stages); a flow's child sets all of Prefect's up again (_prefect_from_client)
    root.handlers[:] = handlers
    root.setLevel(level)
    print(f"runner {fp}: {len(PRELOAD)} libraries loaded in {time.monotonic() - started:.1f} s", flush=True)

    path = folder() / f"{fp}.sock"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    info = folder() / f"{fp}.json"
    info.write_text(json.dumps({"pid": os.getpid(), "since": time.time(), "python": sys.executable}))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the loop through the wakeup fd
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    children: dict[int, socket.socket] = {}
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    idle_since = time.monotonic()
    try:
        while True:
            events = sel.select(timeout=5.0)
            for key, _ in events:
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        wake_r.recv(4096)
                    continue
                conn, _ = listener.accept()
                inherited = [listener, wake_r, wake_w, *children.values()]
                child = _accept(conn, inherited, lock_fd, threading.active_count())
                if child:
                    children[child] = conn
                else:
                    conn.close()
            _reap(children)
            if children:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > IDLE_S:
                print(f"runner {fp}: idle for {IDLE_S:g} s, exiting", flush=True)
                return
    finally:
        for leftover in (path, info):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def runners() -> list[dict]:
    """The runners of this user that are serving: fingerprint, pid, since (epoch seconds), python; and
    whether each serves this environment."""
    mine, out = fingerprint(), []
    for info in sorted(folder().glob("*.json")):
        try:
            record = json.loads(info.read_text())
            os.kill(record["pid"], 0)
        except (OSError, ValueError, KeyError):
            continue
        out.append(record | {"fingerprint": info.stem, "this": info.stem == mine})
    return out


def start_and_wait(timeout_s: float = 120.0) -> dict:
    """A runner for this environment, started if there is none, once it answers."""
    fp = fingerprint()
    deadline = time.monotonic() + timeout_s
    while True:
        found = [r for r in runners() if r["fingerprint"] == fp]
        if found and (folder() / f"{fp}.sock").exists():
            return found[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no runner answered within {timeout_s:g} s: see {folder() / fp}.log")
        start(fp)
        time.sleep(0.2)


def stop() -> list[int]:
    """Stop this user's runners (the stages they run go on to their end); their pids."""
    stopped = []
    for r in runners():
        with contextlib.suppress(ProcessLookupError):
            os.kill(r["pid"], signal.SIGTERM)
            stopped.append(r["pid"])
    return stopped


def _accept(conn: socket.socket, inherited: list[socket.socket], lock_fd: int, threads: int) -> int | None:
    """Fork a child for the request on `conn`; its pid (None when the request was not taken)."""
    fds: list[int] = []
    try:
        conn.settimeout(CONNECT_TIMEOUT_S)
        request = _recv(conn, fds)
        conn.settimeout(None)
        if len(fds) != 3:
            raise ValueError(f"expected stdin, stdout and stderr, got {len(fds)} descriptors")
        unsafe = _unsafe_to_fork(threads)
        if unsafe:  # forking now could leave a lock held forever, or CUDA unusable in the child
            print(f"runner: not forking ({unsafe}); the stage runs in its own process", flush=True)
            _send(conn, {"fallback": unsafe})
            raise ValueError(unsafe)
        pid = os.fork()
    except (OSError, EOFError, ValueError) as err:
        print(f"runner: request not taken: {err}", flush=True)
        for fd in fds:
            os.close(fd)
        return None
    if pid == 0:  # the child: none of the runner's sockets or its lock
        try:
            for sock in inherited:
                sock.close()
            os.close(lock_fd)
            code = _child(conn, request, fds)
        except BaseException as err:
            with contextlib.suppress(Exception):
                sys.stderr.write(f"error: {err}\n")
            code = 1
        os._exit(code)
    for fd in fds:
        os.close(fd)
    return pid


def _unsafe_to_fork(threads: int) -> str | None:
    """Why forking now would be unsafe, if it would."""
    if threads != 1:
        return f"the runner has {threads} Python threads"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA was initialised in the runner"
    return None


def _child(conn: socket.socket, request: dict, fds: list[int]) -> int:
    import atexit
    import threading

    os.setsid()  # a process group of its own: killed as a whole when the client dies
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    streams = (sys.stdout, sys.stderr)  # the runner's, on the same descriptors now: flushed at the end
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        stream = open(fd, mode, closefd=False, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        if mode == "w":
            stream.reconfigure(line_buffering=stream.isatty() or name == "stderr")
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.umask(request["umask"])
    # as if started as the `genloop` command: what Lightning's DDP launcher runs again for each rank
    sys.argv = [request["argv0"], *request["argv"]]
    import __main__

    __main__.__spec__, __main__.__file__ = None, request["argv0"]

    _die_with_client(conn, True)  # armed before the client learns the pid: no moment without an owner
    _send(conn, {"pid": os.getpid()})
    import select

    if select.select([conn], [], [], 0)[0] and not conn.recv(1, socket.MSG_PEEK):
        os.killpg(0, signal.SIGKILL)  # the client died before it was armed
    code = 0
    try:
        if request["argv"][:1] == ["flow"] and "prefect.context" in sys.modules:
            _prefect_from_client()  # after the pid is sent: its errors are the command's, as any other
        from genloop.cli import main

        main()
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        if not isinstance(exit.code, int | None):
            sys.stderr.write(f"{exit.code}\n")
    except KeyboardInterrupt:  # before the command's own handler was reached
        sys.stderr.write("interrupted\n")
        code = 130
    except BaseException:  # as the interpreter would: the traceback, exit status 1
        import traceback

        traceback.print_exc()
        code = 1
    try:
        with contextlib.suppress(Exception):
            threading._shutdown()  # non-daemon threads finish first, as at any exit
        atexit._run_exitfuncs()
        for stream in (*streams, sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    finally:
        _die_with_client(conn, False)  # done: what it leaves running lives on, as after any command
        with contextlib.suppress(OSError):
            _send(conn, {"exit": code})
    return code


def _prefect_from_client() -> None:
    """Prefect's settings (the server's address, its home, the log level) and its log handlers as if it
    were imported now, from the client's environment and on the client's stderr."""
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    refresh_global_settings_context()
    setup_logging(incremental=False)


def _die_with_client(conn: socket.socket, on: bool) -> None:
    """While on, the kernel kills this process group (SIGKILL) the moment the client's end of the socket
    closes, which it does when the client dies: no thread of ours has to be scheduled, nor hold the GIL.
    The client sends nothing after its request, so the socket turns readable only then."""
    import fcntl

    flags = fcntl.fcntl(conn, fcntl.F_GETFL)
    if on:
        fcntl.fcntl(conn, fcntl.F_SETOWN, -os.getpgid(0))
        fcntl.fcntl(conn, getattr(fcntl, "F_SETSIG", 10), signal.SIGKILL)
        fcntl.fcntl(conn, fcntl.F_SETFL, flags | os.O_ASYNC)
    else:
        fcntl.fcntl(conn, fcntl.F_SETFL, flags & ~os.O_ASYNC)


def _reap(children: dict[int, socket.socket]) -> None:
    """Collect children that ended, and tell each one's client how it ended."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        # its own exit message came first if it sent one; this one counts when it could not (a signal,
        # os._exit): the client takes the first
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            _send(conn, {"exit": 128 - code if code < 0 else code})
        conn.close()


def main() -> None:
    """The `genloop` command: `genloop stage ...` and `genloop flow ...` through a warm runner when there
    is one."""
    import tasks  # noqa: F401  (the no-telemetry defaults, in the environment a runner starts with)

    argv = sys.argv[1:]
    if argv[:1] in (["stage"], ["flow"]) and "--help" not in argv:
        code = forward(argv)
        if code is not None:
            sys.exit(code)
    from genloop.cli import main as cli

    cli()


if __name__ == "__main__":
    serve(sys.argv[1])
