"""The versions: BentoML's model store holds every evaluated model.

Every evaluated model is saved as a version of its model line (`genloop-<line>`: one family trained on
one dataset layout, tasks/core/params.py: line) in the store
(`$BENTOML_HOME`, by default `.genloop/bentoml` in the project) with its lineage and metrics as
metadata, its model card and pictures beside the weights. A version's metadata is fixed once saved:
which version is champion lives in the alias record (champions.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tasks.core import paths
from tasks.core.errors import GenloopError
from tasks.core.storage import sha256_file

PREFIX = "genloop-"
FILES = ("model.safetensors", "model.json", paths.TRAINING_RECORD)  # an exported model


def home() -> Path:
    """The store's folder; set before bentoml is imported, which reads BENTOML_HOME once."""
    os.environ.setdefault("BENTOML_HOME", str((paths.STATE / "bentoml").resolve()))
    return Path(os.environ["BENTOML_HOME"])


def bentoml():
    """bentoml, imported once BENTOML_HOME points at the registry."""
    home()
    import bentoml

    return bentoml


def name_of(line: str) -> str:
    """The registry's name of a model line (tasks/core/params.py: line)."""
    return f"{PREFIX}{line}"


def register(
    folder: Path, line: str, version: str, metadata: dict, labels: dict[str, str], extra: dict[str, Path]
) -> str:
    """Save the exported model in `folder` (and `extra` files by relative name: card, pictures) as
    version `version` of line `line`; an existing version is left as it was. Returns the tag."""
    bento = bentoml()
    tag = f"{name_of(line)}:{version}"
    try:
        bento.models.get(tag)
        return tag
    except bento.exceptions.NotFound:
        pass
    metadata = _no_none({**metadata, "weights_sha256": sha256_file(folder / FILES[0])})
    files = {f: folder / f for f in FILES if (folder / f).is_file()}
    with bento.models.create(tag, labels=labels, metadata=metadata) as model:
        for name, file in {**files, **extra}.items():
            target = Path(model.path) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
    return tag


def _no_none(obj):
    """BentoML metadata takes no None: leave such keys out (readers treat a missing key as None)."""
    if isinstance(obj, dict):
        return {k: _no_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [_no_none(v) for v in obj if v is not None]
    return obj


def folder(tag: str) -> Path:
    """The folder holding a version's model.safetensors and model.json."""
    bento = bentoml()
    try:
        return Path(bento.models.get(tag).path)
    except Exception as err:  # NotFound, BentoMLException on a malformed tag
        raise GenloopError(f"no model version {tag!r} in the registry ({home()}): {err}") from None


def info(tag: str) -> dict:
    """A version's tag, creation time, labels and metadata."""
    return _describe(bentoml().models.get(tag))


def _describe(model) -> dict:
    return {
        "tag": str(model.tag),
        "created": model.info.creation_time.isoformat(timespec="seconds"),
        "labels": dict(model.info.labels),
        "metadata": dict(model.info.metadata),
    }


def versions() -> list[dict]:
    """Every genloop version in the store, oldest first, with its alias (champion, previous champion,
    rolled back)."""
    from tasks.registry import champions

    record = champions.record()
    out = []
    for model in bentoml().models.list():
        if not model.tag.name.startswith(PREFIX):
            continue
        tag = str(model.tag)
        out.append({**_describe(model), "path": model.path, "alias": champions.alias(record, tag)})
    return sorted(out, key=lambda v: v["created"])


def resolve(ref: str) -> Path:
    """A registered version's folder from `name:version`, `name:champion` or `name:latest`."""
    from tasks.registry import champions

    if ":" not in ref:
        raise GenloopError(f"{ref!r} is not a model version (expected e.g. genloop-<line>:champion)")
    name, version = ref.split(":", 1)
    if version == "champion":
        tag = champions.champion(name)
        if tag is None:
            raise GenloopError(f"{name} has no champion yet (run evaluate first)")
        return folder(tag)
    return folder(ref)
