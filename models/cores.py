"""One plan for this machine's cores: every genloop process that does math takes its threads from it.

Math libraries split each operation over threads that wait for each other at its end. With more threads
than cores, the thread waited for is often not running, and the others spin: two default digits
trainings side by side, each taking both cores of a 2-core machine, ran 9x slower than one alone
(63 s against 7 s for 500 steps); with one thread each, 1.5x (bench/sharing.py).

The plan shares `total` cores (the ones this process may run on) equally among the processes doing math
now: each `genloop stage`, tune worker, the deployed service and the drift monitor. Each announces
itself in a ledger, one small file per process in a folder shared by everything genloop starts on the
machine as this user (`GENLOOP_CORES_DIR`, default `$TMPDIR/genloop-<uid>/cores`), and follows it:
between steps of its work it reads the ledger again (at most once a second) and changes its threads
when its share changed, so a training alone uses every core, and two trainings use half each within a
second of the second one starting. A share is at least one thread; the first claims get the cores left
over by an uneven division. A process killed without saying goodbye leaves a file whose pid and start
time no longer match a live process: it is ignored and removed by the next reader.

Covered: torch's intra-op threads (OpenMP, MKL, oneDNN: `torch.set_num_threads` in each thread that
computes), its inter-op pool (one thread: genloop runs no graph-level parallelism, and each inter-op
thread would multiply the intra-op ones), numpy's BLAS (threadpoolctl), and the OMP/MKL/OpenBLAS
variables for libraries loaded later and for child processes.

Overrides, the environment before params.yaml's `cores` section: `GENLOOP_CORES` / `cores.total` (the
cores to share), `GENLOOP_THREADS` / `cores.threads` (a fixed thread count for each process, counted
in the plan: a run is bitwise repeatable only with the same threads, so a shared machine's varying
share changes a training's last bits).

The standard library, psutil and PyYAML only (the service's dependencies): a Bento's service uses it too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
FOLLOW_EVERY_S = 1.0  # how often a process reads the ledger again between steps of its work


@dataclass(frozen=True)
class Settings:
    total: int  # cores to share
    threads: int | None  # fixed threads per process; None: an equal share of `total`
    origin: str  # where `total` came from, for `genloop status`


def machine_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return cores


def _param_section(path: str | Path = "params.yaml") -> dict:
    """params.yaml's `cores` section, read on its own (params.yaml is validated where the stages load it;
    the plan is how a stage computes, not what, so it is not one of a stage's DVC params)."""
    try:
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        section = (yaml.load(Path(path).read_text(), Loader=loader) or {}).get("cores") or {}
    except Exception:  # no file, no PyYAML, not YAML: params.yaml is checked where the stages load it
        return {}
    return section if isinstance(section, dict) else {}


def settings(params_path: str | Path = "params.yaml") -> Settings:
    section = _param_section(params_path)

    def pick(var: str, key: str) -> tuple[int | None, str]:
        for value, origin in ((os.environ.get(var), var), (section.get(key), f"cores.{key}")):
            if value not in (None, "", "auto"):
                try:
                    number = int(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{origin}: a whole number of cores or auto (got {value!r})") from None
                if number < 1:
                    raise ValueError(f"{origin}: at least 1 (got {number})")
                return number, origin
        return None, "auto"

    total, origin = pick("GENLOOP_CORES", "total")
    threads, _ = pick("GENLOOP_THREADS", "threads")
    if total is None:
        return Settings(machine_cores(), threads, "this machine (auto)")
    return Settings(total, threads, origin)


def variables(params_path: str | Path = "params.yaml") -> dict[str, str]:
    """params.yaml's settings of the plan as the environment variables that override it, for a process
    that will not find params.yaml (the service, started in its Bento's folder)."""
    section = _param_section(params_path)
    pairs = (("GENLOOP_CORES", "total"), ("GENLOOP_THREADS", "threads"))
    return {
        var: str(os.environ.get(var) or section[key])
        for var, key in pairs
        if os.environ.get(var) or section.get(key) not in (None, "auto")
    }


def private_dir(name: str | Path) -> Path:
    """A folder for this user's genloop processes: `name` as given when absolute, else under
    $XDG_RUNTIME_DIR/genloop or $TMPDIR/genloop-<uid>. Made readable by the user alone; one that someone
    else owns or others may write to (a shared /tmp) is refused."""
    path = Path(name)
    if not path.is_absolute():
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        base = Path(runtime, "genloop") if runtime else Path(tempfile.gettempdir(), f"genloop-{os.getuid()}")
        path = base / path
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_private(base)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(path)
    return path


def _check_private(path: Path) -> None:
    st = path.lstat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022 or not path.is_dir() or path.is_symlink():
        raise PermissionError(f"{path} is not this user's own folder: remove it, or set another place")


def ledger() -> Path:
    return private_dir(os.environ.get("GENLOOP_CORES_DIR") or "cores")


def _started(pid: int) -> float | None:
    """A process's start time (seconds since the epoch), or None when it is gone."""
    import psutil

    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.Error:  # gone, or not ours to see
        return None


def claims(folder: Path | None = None) -> list[dict]:
    """The live claims of the ledger, oldest first; the files of processes that are gone are removed."""
    folder = folder or ledger()
    live = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = folder / name
        try:
            claim = json.loads(path.read_text())
        except (OSError, ValueError):  # being written (rename makes that rare) or removed meanwhile
            continue
        started = _started(claim.get("pid", -1))
        if started is None or abs(started - claim.get("start", 0)) > 1.0:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        live.append(claim)
    return sorted(live, key=lambda c: (c["start"], c["pid"]))


def shares(live: list[dict], total: int) -> dict[int, int]:
    """Threads per pid: fixed claims keep theirs, the others share what is left equally (the oldest
    getting the remainder), and every process at least one."""
    fixed = {c["pid"]: c["threads"] for c in live if c.get("threads")}
    shared = [c["pid"] for c in live if not c.get("threads")]
    left = max(total - sum(fixed.values()), 0)
    out = dict(fixed)
    if shared:
        base, extra = divmod(left, len(shared))
        for i, pid in enumerate(shared):
            out[pid] = max(1, base + (1 if i < extra else 0))
    return out


class _Claim:
    """This process's entry in the ledger and the threads it last applied."""

    def __init__(self, role: str, settings: Settings) -> None:
        self.role, self.settings = role, settings
        self.pid = os.getpid()
        self.path = ledger() / f"{self.pid}.json"
        self.share = settings.threads or settings.total
        self.checked = 0.0
        # torch.set_num_threads sets the calling thread's OpenMP threads (and the default of threads that
        # start computing later): each computing thread applies the share itself
        self.applied = threading.local()
        self.blas = 0
        self.interop = False  # torch's inter-op pool sized (once, before its first use)
        self.write()

    def write(self) -> None:
        start = _started(self.pid) or time.time()
        record = {"pid": self.pid, "start": start, "role": self.role, "project": os.getcwd(),
                  "threads": self.settings.threads}  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.path)

    def refresh(self) -> int:
        live = claims(self.path.parent)
        if not any(c["pid"] == self.pid for c in live):  # removed by someone (a cleaned temp folder)
            self.write()
            live = claims(self.path.parent)
        self.share = shares(live, self.settings.total).get(self.pid, 1)
        self.checked = time.monotonic()
        return self.share

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


_claim: _Claim | None = None
_lock = threading.Lock()


def claim(role: str, params_path: str | Path = "params.yaml") -> int:
    """Join the plan as a process doing math (`role`: `stage train`, `serve`, `monitor`, ...) and take
    this process's share now; returns it. A second claim in the same process changes only its role."""
    global _claim
    with _lock:
        if _claim is not None:
            _claim.role = role
            _claim.write()
        else:
            _claim = _Claim(role, settings(params_path))
            import atexit

            atexit.register(release)
        share = _claim.refresh()
    _set_variables(share)
    _apply(share)
    return share


def release() -> None:
    """Leave the plan (a process that now only waits, e.g. for its workers), so others take its cores."""
    global _claim
    with _lock:
        if _claim is not None:
            _claim.remove()
            _claim = None


@contextlib.contextmanager
def claimed(role: str, params_path: str | Path = "params.yaml"):
    """The plan for the length of a block (the monitor's check inside a longer-lived flow process)."""
    had = _claim is not None
    claim(role, params_path)
    try:
        yield
    finally:
        if not had:
            release()


def follow(limit: int | None = None) -> int | None:
    """Between steps of work, in the thread that computes: read the ledger again (at most once a second)
    and apply this process's share if it changed; `limit` caps it for this thread (a background thread
    beside the one that computes for requests). Returns the threads, or None outside the plan."""
    c = _claim
    if c is None:
        return None
    if time.monotonic() - c.checked >= FOLLOW_EVERY_S:
        with _lock:
            if _claim is c and time.monotonic() - c.checked >= FOLLOW_EVERY_S:  # (not released meanwhile)
                c.refresh()
    threads = c.share if limit is None else min(c.share, limit)
    _apply(threads, process=limit is None)
    return threads


def _set_variables(threads: int) -> None:
    """For libraries that read them when they load, and for child processes before they claim."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)


def _apply(threads: int, process: bool = True) -> None:
    """Torch's threads for the calling thread; with `process`, numpy's BLAS too (one setting for all)."""
    c = _claim
    if "torch" not in sys.modules:
        _after_torch_import()
    elif c is not None:
        if not c.interop:
            _interop_once()
            c.interop = True
        if getattr(c.applied, "threads", None) != threads:
            import torch

            torch.set_num_threads(threads)
            c.applied.threads = threads
    if process and c is not None and c.blas != threads and "numpy" in sys.modules:
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_limits

            threadpool_limits(threads, user_api="blas")
            c.blas = threads


def _interop_once() -> None:
    import torch

    with contextlib.suppress(RuntimeError):  # already set, or inter-op work has started
        torch.set_num_interop_threads(1)


class _TorchHook:
    """A finder that, when torch is imported, sets its inter-op pool and this process's share right after
    (the inter-op pool can only be sized before its first use)."""

    def find_spec(self, name: str, path=None, target=None):
        if name != "torch":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def run_then_plan(module) -> None:
            exec_module(module)
            if _claim is not None:
                _apply(_claim.share)

        spec.loader.exec_module = run_then_plan  # type: ignore[method-assign]
        return spec


_hook = _TorchHook()


def _after_torch_import() -> None:
    if _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)


def plan(params_path: str | Path = "params.yaml") -> dict:
    """The plan as `genloop status` shows it: the cores, where that figure came from, and each process
    in it with its threads now."""
    s = settings(params_path)
    live = claims()
    threads = shares(live, s.total)
    return {
        "cores": s.total,
        "origin": s.origin,
        "threads": s.threads,
        "ledger": str(ledger()),
        "processes": [c | {"now": threads[c["pid"]]} for c in live],
    }
