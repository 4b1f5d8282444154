"""How a Prefect task runs a stage: through `dvc repro`, so DVC alone decides what is up to date.

A run from the Prefect UI and a `dvc repro` in a shell therefore skip the same work, write the same
dvc.lock and share one cache.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections import deque
from collections.abc import Callable
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

        return task(**self._options)(self._fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._task(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # submit, map, with_options, fn, name, retries...
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._task, name)


def task(**options: Any) -> Callable[[Callable], LazyTask]:
    """`prefect.task(**options)`, built when a flow first calls it (see LazyTask)."""
    return lambda fn: LazyTask(fn, options)


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


def repro(stage: str, force: bool = False) -> None:
    """`dvc repro --single-item <stage>` in the current project, its output streamed to the run log."""
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage, *(["--force"] if force else [])]
    tail: deque[str] = deque(maxlen=30)
    code = stream(cmd, tail=tail)
    if code != 0:
        raise GenloopError(f"stage {stage} failed (dvc repro exit {code}):\n" + "\n".join(tail))


def stream(
    cmd: list[str], prefix: str = "", tail: deque[str] | None = None, env: dict[str, str] | None = None
) -> int:
    """Run `cmd`, its output line by line to the run log (or stdout outside a run); returns its exit code."""
    log = _logger()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if tail is not None:
                tail.append(line)
            line = f"{prefix}: {line}" if prefix else line
            if log:
                log.info(line)
            else:
                print(line, flush=True)
    return proc.returncode


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
