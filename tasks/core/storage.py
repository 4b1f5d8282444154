"""File-level helpers every stage shares: hashing, deterministic JSON, atomic replacement, safe paths."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tasks.core.errors import GenloopError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dumps(obj: object) -> str:
    """Deterministic JSON (sorted keys, fixed indent, trailing newline) so equal content hashes equal."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, default=_plain) + "\n"


def _plain(obj: object) -> object:
    """numpy scalars (as reported by pandas or GX) become their Python value."""
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def parse_yaml(text: str) -> object:
    """YAML's safe subset, through libyaml when PyYAML has it (dvc.lock, params.yaml: 5-10x faster)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def content_hash(obj: object) -> str:
    """sha256 of an object's deterministic JSON: equal content, equal hash."""
    return sha256_bytes(dumps(obj).encode())


def write_json(path: str | Path, obj: object) -> None:
    write_bytes_atomic(path, dumps(obj).encode())


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GenloopError(f"{path} not found: run the stage that writes it first")
    return json.loads(path.read_text())


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def staged_dir(target: str | Path, keep_previous: Path | None = None) -> Iterator[Path]:
    """Yield an empty sibling folder; on success it replaces `target` whole, on error it is dropped.

    A stage that fails half-way therefore leaves its previous output exactly as it was. With
    `keep_previous`, the replaced folder is moved there instead of being deleted. A staging folder
    left by a killed run (its process is gone) is removed by the next one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target.parent, f".{target.name}.staging-")
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-{os.getpid()}-"))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = keep_previous or target.with_name(f".{target.name}.old")
    old.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(stage, target)
    if keep_previous is None:
        shutil.rmtree(old, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Is process `pid` running? A zombie (ended, not yet collected by its parent) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: alive
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return True


def remove_orphans(folder: Path, prefix: str) -> list[Path]:
    """Remove `prefix<pid>-*` folders (and older `prefix*` ones without a pid) whose process is gone."""
    removed = []
    for old in Path(folder).glob(f"{prefix}*"):
        pid = old.name[len(prefix) :].split("-", 1)[0]
        if not (pid.isdigit() and pid_alive(int(pid))):
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed


def inside(root: str | Path, relative: str) -> Path:
    """Resolve `relative` under `root`, refusing anything (.., absolute, symlink) that escapes it."""
    root_resolved = Path(root).resolve()
    path = (root_resolved / relative).resolve()
    if not path.is_relative_to(root_resolved):
        raise GenloopError(f"path {relative!r} escapes {root}")
    return path
