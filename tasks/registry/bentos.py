"""Bentos that are whole: built aside, listed file by file, moved into BentoML's store in one rename.

A Bento killed while it was copied would otherwise sit in the store as a folder with `bento.yaml` and a
few of its files, and `bentoml serve` would run it. Each Bento genloop builds carries `FILES`, the
sha256 of every file in it, written last; a Bento is used only when that list is there and every file
matches (package rebuilds one that does not, deploy refuses it).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from tasks.core.errors import GenloopError
from tasks.core.storage import sha256_file, write_json
from tasks.registry import store

FILES = "genloop-files.json"


def _listing(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != FILES
    }


@contextlib.contextmanager
def staged(tag: str) -> Iterator[object]:
    """A BentoStore for one build; on leaving, the Bento gets its file list and moves into the store."""
    from bentoml._internal.bento.bento import BentoStore

    with store.staging("bentos") as (root, publish):
        yield BentoStore(root)
        name, version = tag.split(":")
        built = Path(root) / name / version
        write_json(built / FILES, _listing(built))
        publish(tag)


def get(tag: str):
    """The Bento `tag` from this machine's store, imported from site.remote when another machine built
    it; BentoML's NotFound when neither has it."""
    from tasks.registry import shared

    bentoml = store.bentoml()
    try:
        return bentoml.get(tag)
    except bentoml.exceptions.NotFound:
        if shared.found_elsewhere("bentos", tag):
            return bentoml.get(tag)
        raise


def verify(tag: str) -> Path:
    """The Bento's folder, after checking it is complete; a GenloopError naming what is wrong if not."""
    bentoml = store.bentoml()
    try:
        bento = bentoml.get(tag)
        path = Path(bento.path)
    except Exception as err:  # NotFound, or a folder BentoML cannot read (no bento.yaml)
        raise GenloopError(f"Bento {tag} is not usable: {err}") from None
    listed = path / FILES
    if not listed.is_file():
        raise GenloopError(f"Bento {tag} is incomplete (no {FILES}: not built whole by genloop): rebuild it")
    expected = json.loads(listed.read_text())
    missing = [rel for rel in expected if not (path / rel).is_file()]
    if missing:
        raise GenloopError(
            f"Bento {tag} is incomplete: {missing[0]} is missing; rebuild it (genloop stage package)"
        )
    for rel, digest in expected.items():
        if sha256_file(path / rel) != digest:
            raise GenloopError(f"Bento {tag} is damaged: {rel} changed since it was built; rebuild it")
    for model in bento.info.models:
        store.verify(str(model.tag))
    return path
