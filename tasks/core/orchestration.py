"""How a Prefect task runs a stage: through `dvc repro`, so DVC alone decides what is up to date.

A run from the Prefect UI and a `dvc repro` in a shell therefore skip the same work, write the same
dvc.lock and share one cache. Within a flow run, DVC's `status` of the whole pipeline is asked in the
flow's own process, and a stage it finds up to date is not started again through `dvc repro` (a
second process, about 0.6 s even with nothing to do). The answer holds until a stage of the run has
run: then DVC's status is asked again before the next stage.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from tasks.core.errors import GenloopError


class LazyTask:
    """A Prefect task that imports Prefect on first use. `genloop stage <name>`, which DVC runs for every
    stage, imports the stage's module for its `run` alone and so never pays Prefect's import (2 s)."""

    def __init__(self, fn: Callable, options: dict[str, Any]) -> None:
        self._fn, self._options = fn, options
        functools.update_wrapper(self, fn)

    @functools.cached_property
    def _task(self):
        from prefect import task

        quiet_user_errors()
        return task(**self._options)(self._fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return self._task(*args, **kwargs)
        finally:  # what each task of a flow run took, for its summary (retries and waits included)
            run = _flow_run()
            if run:
                took = _seconds.setdefault(run, {})
                name = self._options.get("name", self._fn.__name__)
                took[name] = took.get(name, 0.0) + time.monotonic() - started

    def __getattr__(self, name: str) -> Any:  # submit, map, with_options, fn, name, retries...
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._task, name)


_seconds: dict[str, dict[str, float]] = {}  # flow run -> task name -> seconds in this process


def seconds() -> dict[str, float]:
    """What each task called so far in the current flow run took, by the task's name."""
    return dict(_seconds.get(_flow_run() or "", {}))


def task(**options: Any) -> Callable[[Callable], LazyTask]:
    """`prefect.task(**options)`, built when a flow first calls it (see LazyTask)."""
    return lambda fn: LazyTask(fn, options)


class _UserErrors:
    """Drops Prefect's "failed with exception" records, traceback and all, when the exception is a
    GenloopError: a problem the user fixes (a misspelt key, a refused batch) is told once, by the run's
    state ("Finished in state Failed(...)") and by the command's own `error:` line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], GenloopError))


@functools.cache
def quiet_user_errors() -> None:
    """Install the filter above on the loggers of Prefect's flow and task runs (once per process)."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_UserErrors())


def _logger():
    if "prefect" not in sys.modules:  # no flow or task run can be active in this process
        return None
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return None


# What a network that failed for a while says (botocore, urllib3, httpx, S3's own answers). A stage
# failing for any other reason, a refused batch or a gate above all, fails the same way again.
TRANSIENT = (
    "Could not connect", "EndpointConnectionError", "ConnectionError", "ConnectTimeout", "ReadTimeout",
    "timed out", "Overdue", "SlowDown", "Throttl", "ServiceUnavailable", "temporarily unavailable",
)  # fmt: skip


def transient(task: object, task_run: object, state) -> bool:
    """Prefect's retry_condition_fn: retry a task that the network failed, nothing else."""
    return any(marker in (state.message or "") for marker in TRANSIENT)


_up_to_date: dict[tuple[str, str], Future] = {}  # (flow run, project folder) -> stages, until one runs
_status_lock = threading.Lock()


def _flow_run() -> str | None:
    if "prefect" not in sys.modules:
        return None
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


def _status() -> set[str] | None:
    """The stages DVC's status finds up to date, or None when it could not tell."""
    try:
        from dvc.repo import Repo

        with Repo(_wait_for_lock=True) as repo:
            changed = repo.status()
            return {s.addressing for s in repo.index.stages} - set(changed)
    except Exception:  # a broken dvc.yaml, a held lock: `dvc repro` will say what
        return None


def prefetch_status() -> None:
    """Start DVC's status for this flow run in a thread, while Prefect starts the first tasks."""
    run = _flow_run()
    if run is None:
        return
    with _status_lock:
        key = (run, os.getcwd())
        if key not in _up_to_date:
            _up_to_date[key] = _pool().submit(_status)


@functools.cache
def _pool():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(1, thread_name_prefix="dvc-status")


def up_to_date(stage: str) -> bool:
    """Did DVC's status, asked once in this flow run since the last stage that ran, find `stage` up to
    date? False outside a flow run, and whenever DVC could not tell (then `dvc repro` says why)."""
    prefetch_status()
    with _status_lock:
        found = _up_to_date.get((_flow_run() or "", os.getcwd()))
    clean = found.result() if found is not None else None
    return clean is not None and stage in clean


def repro(stage: str, force: bool = False) -> None:
    """`dvc repro --single-item <stage>` in the current project, its output streamed to the run log; in a
    flow run, skipped when DVC's status found the stage up to date and nothing has run since."""
    if not force and up_to_date(stage):
        _say(f"Stage '{stage}' didn't change, skipping (dvc status)")
        return
    with _status_lock:
        asked = [k for k in _up_to_date if k[1] == os.getcwd()]
        pending = [_up_to_date.pop(k) for k in asked]  # this stage may change what the next ones depend on
    for status in pending:
        status.result()  # a status still running holds DVC's lock: `dvc repro` would give up on it
    # --wait-for-lock: a second flow run in this checkout waits for the first one's stage to end
    # (DVC's stages of one repository never run at once) instead of failing on DVC's lock
    args = ["repro", "--single-item", stage, *(["--force"] if force else [])]
    cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", *args]
    tail: deque[str] = deque(maxlen=30)
    code = stream(cmd, tail=tail)
    if code != 0:
        said = _said(list(tail))
        if said:  # the stage's own `genloop` told the user what to fix: that alone, not DVC's wrapping
            raise GenloopError(f"stage {stage}: {said}")
        raise GenloopError(f"stage {stage} failed (dvc repro exit {code}):\n" + "\n".join(tail))


def _said(lines: list[str]) -> str | None:
    """What a stage's `genloop` printed as its error: its last `error: ...` line and every line after
    it, up to DVC's own report of the failure."""
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    if not starts:
        return None
    said = [lines[starts[-1]].removeprefix("error: ")]
    said += itertools.takewhile(lambda line: not line.startswith("ERROR: "), lines[starts[-1] + 1 :])
    return "\n".join(said)


def _say(line: str) -> None:
    log = _logger()
    if log:
        log.info(line)
    else:
        print(line, flush=True)


def stream(
    cmd: list[str], prefix: str = "", tail: deque[str] | None = None, env: dict[str, str] | None = None
) -> int:
    """Run `cmd`, its output line by line to the run log (or stdout outside a run); returns its exit code."""
    log = _logger()

    def say(line: str) -> None:
        line = f"{prefix}: {line}" if prefix else line
        if log:
            log.info(line)
        else:
            print(line, flush=True)

    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in shown(proc.stdout):
            if tail is not None:
                tail.append(line)
            say(line)
    return proc.returncode


# A progress bar's refresh (tqdm's "45%|####  | 450/1000 [00:10<00:12, ...]", each one a line through a
# pipe) and DVC's advice to `git add dvc.lock` after every stage: told once in a while, and not at all.
PROGRESS = re.compile(r"\d+%\|.*\|\s*\d+(\.\d+)?[kMG]?/\d")
PROGRESS_EVERY_S = 20.0
HINTS = (
    "To track the changes with git, run:", "git add dvc.lock", "To enable auto staging, run:",
    "dvc config core.autostage true", "Use `dvc push` to send your updates to remote storage.",
)  # fmt: skip


def shown(
    lines: Iterable[str], every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] = time.monotonic
) -> Iterator[str]:
    """The lines worth a log line each: a progress bar at its first refresh, then at most one refresh
    every `every_s` seconds and its last one (what it did and how long is left, not 50 lines a second);
    no blank lines and no DVC git hints (the flow's summary says once what changed)."""
    pending, shown_at = None, -math.inf
    for line in lines:
        line = line.rstrip()
        if not line.strip() or line.strip() in HINTS:
            continue
        if PROGRESS.search(line):
            if clock() - shown_at >= every_s:
                pending, shown_at = None, clock()
                yield line
            else:
                pending = line
            continue
        if pending is not None:
            yield pending
            pending = None
        yield line
    if pending is not None:
        yield pending


def publish_table(key: str, rows: list[dict], description: str) -> None:
    """Show key figures in the Prefect UI (a no-op outside a flow run)."""
    if _logger() is None:
        return
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key=key, table=rows, description=description)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    if _logger() is None:
        return
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=key, markdown=markdown, description=description)
