"""Data sources for collect: built-in datasets, a local folder, or S3 (see s3.py).

Every source writes files under a destination folder and returns one manifest entry per file.
Output depends only on the source's content, so collecting twice yields byte-identical files.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.core.datasets import SUFFIXES
from tasks.core.errors import GenloopError
from tasks.core.params import BUILTIN_SOURCES, CollectParams
from tasks.core.storage import inside, sha256_bytes


@dataclass(frozen=True)
class Entry:
    path: str  # relative to data/raw
    sha256: str
    size: int
    source: str  # URI of the original
    label: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def label_of(relative: str) -> str | None:
    """Sub-folder name directly above the file, or None for a file at the top of the source."""
    parts = Path(relative).parts
    return parts[-2] if len(parts) > 1 else None


def put(dest: Path, relative: str, data: bytes, source: str) -> Entry:
    """Store one file under dest/files/ and describe it."""
    if relative.startswith("/") or {".", ".."} & set(relative.split("/")):
        raise GenloopError(f"{source}: its name {relative!r} steps out of its folder (. or ..): refused")
    target = inside(dest / "files", relative)  # nor may a symlink lead out of files/
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return Entry(f"files/{relative}", sha256_bytes(data), len(data), source, label_of(relative))


def sklearn_digits(dest: Path) -> list[Entry]:
    """The 1,797 8x8 digits of scikit-learn (bundled with it, no download), as 8-bit PNGs per label folder."""
    import numpy as np
    from PIL import Image

    from tasks.ingest.digits import load_digits

    images, labels = load_digits()
    entries = []
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        pixels = np.rint(img * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="PNG")
        entries.append(put(dest, f"{label}/{i:04d}.png", buf.getvalue(), f"sklearn:digits#{i}"))
    return entries


def pydoc_topics(dest: Path) -> list[Entry]:
    """Python's own help topics (pydoc_data ships with every CPython): ~80 documents, ~0.5 MB of text."""
    from pydoc_data.topics import topics

    return [
        put(dest, f"{name}.txt", text.encode("utf-8"), f"pydoc:topics#{name}")
        for name, text in sorted(topics.items())
    ]


def folder_files(source: str) -> list[tuple[Path, str]]:
    """(path, relative name) of every .png / .txt under a local folder, hidden files skipped."""
    root = Path(source.removeprefix("file://")).expanduser()
    if not root.is_dir():
        raise GenloopError(f"source folder {root} does not exist")
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if (
            path.is_file()
            and path.suffix.lower() in SUFFIXES
            and not any(p.startswith(".") for p in rel.split("/"))
        ):
            found.append((path, rel))
    return found


def local_folder(source: str, dest: Path) -> list[Entry]:
    """Every .png / .txt under a local folder (hidden files skipped); labels from sub-folder names."""
    return [
        put(dest, rel, path.read_bytes(), f"{source.rstrip('/')}/{rel}") for path, rel in folder_files(source)
    ]


def fetch(source: str, dest: Path, params: CollectParams) -> list[Entry]:
    """Dispatch on the URI scheme of `data.source`."""
    if source == "sklearn:digits":
        return sklearn_digits(dest)
    if source == "pydoc:topics":
        return pydoc_topics(dest)
    if source.startswith("s3://"):
        from tasks.ingest.s3 import download_prefix

        return download_prefix(source, dest, params)
    return local_folder(source, dest)


def peek_kind(source: str, params: CollectParams) -> str:
    """The kind of data at `source`, 'image' or 'text', from its file names alone (nothing fetched)."""
    if source in BUILTIN_SOURCES:
        return BUILTIN_SOURCES[source]
    if source.startswith("s3://"):
        from tasks.ingest.s3 import list_names

        return kind_of(list_names(source, params), source)
    return kind_of([rel for _, rel in folder_files(source)], source)


def kind_of(names: list[str], source: str) -> str:
    """'image' or 'text' from file names; a source mixing both, or holding neither, is refused."""
    kinds = {SUFFIXES[Path(name).suffix.lower()] for name in names}
    if not kinds:
        raise GenloopError(f"source {source} holds no .png or .txt files: nothing to collect")
    if len(kinds) > 1:
        raise GenloopError(f"source {source} mixes .png and .txt files: use one kind per source")
    return kinds.pop()
