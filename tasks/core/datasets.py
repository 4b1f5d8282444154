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


def source_kind(source: str) -> str | None:
    """'image' or 'text': the kind of data at `source` as collected already (data/processed, data/raw), else
    from the first data file's name of a local folder; None when it cannot be told without fetching
    (S3 before its first collect) or yet (a folder missing or empty): collect finds out, and says why."""
    from tasks.core.params import BUILTIN_SOURCES

    if source in BUILTIN_SOURCES:
        return BUILTIN_SOURCES[source]
    for made in (paths.PROCESSED / "meta.json", paths.MANIFEST):  # augmented, or collected
        found = json.loads(made.read_text()) if made.is_file() else {}
        if found.get("source") == source and found.get("kind"):
            return found["kind"]
    if source.startswith("s3://"):
        return None
    first = _first_data_file(Path(source.removeprefix("file://")).expanduser())
    return SUFFIXES[first.suffix.lower()] if first is not None else None


def _first_data_file(root: Path) -> Path | None:
    """The first data file of a folder, in sorted order (the one that decides its kind; collect checks
    the others agree)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if Path(name).suffix.lower() in SUFFIXES and not name.startswith("."):
                return Path(folder) / name
    return None


BUILTIN_IMAGE_SIZES = {"sklearn:digits": (8, 8)}


def source_image_size(source: str) -> tuple[int, int] | None:
    """(height, width) of the images at `source`, found as source_kind finds the kind: from what was
    processed or collected already, else from the header of a local folder's first image; None for
    text, for S3 before its first collect, and for a folder with no image yet."""
    if source in BUILTIN_IMAGE_SIZES:
        return BUILTIN_IMAGE_SIZES[source]
    meta = paths.PROCESSED / "meta.json"
    if meta.is_file():
        found = json.loads(meta.read_text())
        if found.get("source") == source and found.get("kind") == "image":
            return tuple(found["shape"][1:])
    collected = json.loads(paths.MANIFEST.read_text()) if paths.MANIFEST.is_file() else {}
    if collected.get("source") == source:
        first = _first_data_file(paths.RAW / "files")
    elif not source.startswith("s3://"):
        first = _first_data_file(Path(source.removeprefix("file://")).expanduser())
    else:
        first = None
    if first is None or SUFFIXES[first.suffix.lower()] != "image":
        return None
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(first) as image:  # reads the header only
                return image.height, image.width
    except (OSError, Image.DecompressionBombError):  # (UnidentifiedImageError is an OSError)
        return None  # collect and validate say what is wrong with it
