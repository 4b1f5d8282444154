"""The processed-data format that augment writes and train, evaluate and the benches read, and the
name a dataset goes by.

data/processed/meta.json describes the dataset: kind, shape and classes (images) or vocabulary (text),
split sizes, source and seed. Images are {split}_x.npy (uint8, N x C x H x W) and {split}_y.npy (int64
class ids); text is {split}.npy (uint16 character ids). meta.json's `sha256` holds each of those
files' hash, checked whenever they are loaded: data changed behind DVC's back is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from tasks.core import paths
from tasks.core.errors import GenloopError

SPLITS = ("train", "val", "test")
SUFFIXES = {".png": "image", ".txt": "text"}  # the data files a source holds, by kind


def load_splits(
    processed: Path = paths.PROCESSED, names: tuple[str, ...] = ("train", "val")
) -> tuple[dict, dict]:
    """(meta.json, {split: (x, y)}) from data/processed; y is None for text."""
    import numpy as np

    meta_path = processed / "meta.json"
    if not meta_path.is_file():
        raise GenloopError(f"{meta_path} not found: run the data stages first (dvc repro augment)")
    meta = json.loads(meta_path.read_text())
    files = {s: [f"{s}_x.npy", f"{s}_y.npy"] if meta["kind"] == "image" else [f"{s}.npy"] for s in names}
    check(processed, [f for s in names for f in files[s]], meta.get("sha256"))
    if meta["kind"] == "image":
        splits = {s: (np.load(processed / f"{s}_x.npy"), np.load(processed / f"{s}_y.npy")) for s in names}
    else:
        splits = {s: (np.load(processed / f"{s}.npy"), None) for s in names}
    return meta, splits


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of each split file in a processed folder (what meta.json records)."""
    from tasks.core.storage import sha256_file

    return {p.name: sha256_file(p) for p in sorted(Path(folder).glob("*.npy"))}


def check(folder: Path, names: list[str], recorded: dict[str, str] | None) -> None:
    """Refuse split files that differ from what augment wrote (a flipped byte in DVC's cache, an edit)."""
    from tasks.core.storage import sha256_file

    if recorded is None:
        return  # written before hashes were recorded
    for name in names:
        if sha256_file(folder / name) != recorded.get(name):
            raise GenloopError(
                f"{folder / name} is not what augment wrote (its sha256 differs from meta.json): the data "
                "changed or was damaged; run `dvc repro -f augment` to write it again"
            )


def class_order(labels) -> list[str]:
    """Class names in the order of their ids: by length, then name, so folders 0..10 count as numbers."""
    return sorted(set(labels), key=lambda s: (len(s), s))


def layout(meta: dict) -> dict[str, Any]:
    """What a model must know of its data, and what a model trained on other data differs in."""
    if meta["kind"] == "image":
        return {"kind": "image", "shape": meta["shape"], "classes": meta["classes"]}
    return {"kind": "text", "vocab": meta["vocab"]}


def name(source: str) -> str:
    """A short, stable, file-safe name for the dataset at `source`: `sklearn-digits`, `pydoc-topics`,
    or the folder's (or S3 prefix's) last part and a hash of the address as params.yaml writes it, e.g.
    `shapes-1a2b3c`: the same in every clone of the project, wherever it lies."""
    if source.startswith(("sklearn:", "pydoc:")):
        return source.replace(":", "-")
    address = source.removeprefix("file://").rstrip("/")
    last = re.sub(r"[^A-Za-z0-9_.-]+", "-", address.rsplit("/", 1)[-1]).strip("-.") or "data"
    return f"{last[:40]}-{hashlib.sha256(address.encode()).hexdigest()[:6]}"


def line_of(source: str, family: str, chosen: str = "auto") -> str:
    """A model line's name: `chosen` (model.name), or for `auto` the dataset's name and the family, in
    the lowercase letters, digits and '-._' a registry name takes."""
    if chosen != "auto":
        return chosen
    line = re.sub(r"[^a-z0-9._-]+", "-", f"{name(source)}-{family}".lower())
    return line[:55].strip("-._")  # a registry name, genloop-<line>, is a BentoML tag: 63 at most


def require_family_fits(family: str, kind: str, where: str) -> None:
    """A GenloopError naming the families that fit, when model family `family` cannot model `kind`
    data (found at `where`)."""
    import models

    if models.family(family).kind != kind:
        fit = " or ".join(models.for_kind(kind))
        raise GenloopError(
            f"model.family {family} models {models.family(family).kind} data, but {where} holds {kind}: "
            f"use model.family {fit} (or another data.source)"
        )


BUILTIN_IMAGE_SIZES = {"sklearn:digits": (8, 8)}


def describe_source(source: str) -> tuple[str | None, tuple[int, int] | None]:
    """The kind of data at `source` ('image' or 'text') and, for images, their (height, width): from
    what was processed or collected of this source already, else from a local folder's first data file
    (its name; an image's header). None where it cannot be told without fetching (S3 before its first
    collect) or yet (a folder missing or empty, an unreadable image): collect and validate find out,
    and say why."""
    from tasks.core.params import BUILTIN_SOURCES

    if source in BUILTIN_SOURCES:
        return BUILTIN_SOURCES[source], BUILTIN_IMAGE_SIZES.get(source)
    processed = _record_of(paths.PROCESSED / "meta.json", source)
    if processed.get("kind"):
        return processed["kind"], tuple(processed["shape"][1:]) if processed["kind"] == "image" else None
    if _record_of(paths.MANIFEST, source):
        first = _first_data_file(paths.RAW / "files")
    elif not source.startswith("s3://"):
        first = _first_data_file(Path(source.removeprefix("file://")).expanduser())
    else:
        return None, None
    if first is None:
        return None, None
    kind = SUFFIXES[first.suffix.lower()]
    return kind, _image_size(first) if kind == "image" else None


def _record_of(path: Path, source: str) -> dict:
    """A JSON record (meta.json, the manifest) if it describes `source`, else {}."""
    found = json.loads(path.read_text()) if path.is_file() else {}
    return found if found.get("source") == source else {}


def _first_data_file(root: Path) -> Path | None:
    """The first data file of a folder, in sorted order (the one that decides its kind; collect checks
    the others agree)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if Path(name).suffix.lower() in SUFFIXES and not name.startswith("."):
                return Path(folder) / name
    return None


def _image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from an image file's header; None when it cannot be read."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # reads the header only
                return image.height, image.width
    except (OSError, Image.DecompressionBombError):  # (UnidentifiedImageError is an OSError)
        return None
