"""Data and stage outputs through a DVC remote on S3 (site.remote), so another checkout reproduces
nothing the remote already has.

- `configure()` points DVC at `<site.remote>/dvc` in `.dvc/config.local` (git stays clean); once the
  site is unset, the next flow removes what it added there (`forget()`).
- `push()` sends every output dvc.lock names to the remote, then the model line's dvc.lock to
  `<site.remote>/pipelines/<line>/dvc.lock`: what another checkout needs to know which outputs are the
  pipeline's current ones (dvc.lock is made by the stages, not kept in git).
- `pull()` takes that dvc.lock when this checkout has none, or has not changed its own since it last
  exchanged one (a fast-forward); a checkout that ran stages of its own since keeps its dvc.lock (and
  publishes it at its next push). Then it fetches the outputs dvc.lock names, so DVC finds every stage
  the remote had up to date.

Pushes of two checkouts are not merged: the later dvc.lock is the line's, and the outputs of both stay
in the remote.
"""

from __future__ import annotations

import hashlib
import sys
from collections import deque
from pathlib import Path

from tasks.core import objects, paths, site
from tasks.core.errors import GenloopError
from tasks.core.storage import write_bytes_atomic

NAME = "genloop"  # the DVC remote's name in .dvc/config.local
LOCK = Path("dvc.lock")
BASE = paths.STATE / "site" / "dvc.lock.sha256"  # the dvc.lock last exchanged with the remote


def configure(remote: str | None = None) -> str | None:
    """Make `.dvc/config.local` name the site's DVC remote (or drop it when no site is set); returns the
    remote's URL, or None."""
    remote = remote if remote is not None else site.current().remote
    from dvc.repo import Repo

    url = site.join(remote, "dvc") if remote else None
    with Repo(_wait_for_lock=True) as repo:
        current = repo.config["remote"].get(NAME, {}).get("url")
        default = repo.config["core"].get("remote")
        if current == url and (default == NAME) == bool(url):
            return url
        with repo.config.edit("local") as conf:
            if url:
                conf["remote"][NAME] = {"url": url}
                conf["core"]["remote"] = NAME
            else:
                conf["remote"].pop(NAME, None)
                if conf["core"].get("remote") == NAME:
                    conf["core"].pop("remote")
    return url


def _lock_url(remote: str, line: str) -> str:
    return site.join(remote, "pipelines", line, "dvc.lock")


def _sha(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


def _dvc(*args: str) -> None:
    from tasks.core.orchestration import stream

    tail: deque[str] = deque(maxlen=20)
    code = stream([sys.executable, "-m", "dvc", "--wait-for-lock", *args], prefix="dvc", tail=tail)
    if code != 0:  # one line: DVC's own error (its log above has the rest)
        errors = [line for line in tail if line.startswith("ERROR")] or [
            line for line in tail if line.strip()
        ]
        reason = errors[-1].removeprefix("ERROR: ") if errors else f"exit {code}"
        raise GenloopError(f"dvc {args[0]} with the DVC remote of site.remote failed: {reason}")


def pull(line: str, remote: str | None = None) -> dict:
    """Before a flow runs: the line's dvc.lock from the remote (when this checkout may take it), then the
    outputs it names. Returns what it did."""
    remote = remote if remote is not None else site.current().remote
    if not remote:
        return {"remote": None}
    shared = objects.read(_lock_url(remote, line))  # first: an unreachable remote changes nothing here
    configure(remote)
    local = LOCK.read_bytes() if LOCK.is_file() else None
    base = BASE.read_text().strip() if BASE.is_file() else None
    took = False
    if shared is not None and shared != local:
        if local is None or _sha(local) == base:
            write_bytes_atomic(LOCK, shared)
            took = True
            _say(f"took the pipeline's dvc.lock of {line} from {remote}")
        else:
            _say("kept this checkout's dvc.lock: it changed since it was last shared (push publishes it)")
    if shared is not None and (took or shared == local):
        _mark(shared)  # in step with the remote: its next dvc.lock may be taken
    if LOCK.is_file():
        _dvc("pull", "--allow-missing")
    return {"remote": remote, "took_lock": took}


def push(line: str, remote: str | None = None, share_lock: bool = True) -> dict:
    """After stages ran: their outputs to the remote, then (`share_lock`) the line's dvc.lock, as it was
    when the push began. Returns what it did."""
    remote = remote if remote is not None else site.current().remote
    if not remote or not LOCK.is_file():
        return {"remote": remote, "pushed": False}
    configure(remote)
    data = LOCK.read_bytes()  # the outputs pushed are those it names (a stage may rewrite it meanwhile)
    _dvc("push")
    if share_lock:
        objects.write(_lock_url(remote, line), data)
        _mark(data)
    return {"remote": remote, "pushed": True, "lock": share_lock}


def shared_lock(line: str, remote: str) -> bytes | None:
    """The line's dvc.lock in the remote, or None."""
    return objects.read(_lock_url(remote, line))


def forget() -> None:
    """No site set: drop the DVC remote genloop added to .dvc/config.local, if it is there (read as text
    first, so that a checkout that never had a site pays nothing)."""
    local = Path(".dvc/config.local")
    if local.is_file() and f"'remote \"{NAME}\"'" in local.read_text():
        configure(None)


def _mark(data: bytes) -> None:
    BASE.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(BASE, (_sha(data) or "").encode())


def _say(line: str) -> None:
    from tasks.core.orchestration import _say as say

    say(line)
