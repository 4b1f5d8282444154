"""The model registry: BentoML's model store, plus a small alias record of who is champion.

Every evaluated model is saved as a version of `genloop-<family>` in the store (`$BENTOML_HOME`, by
default `.genloop/bentoml` in the project) with its lineage and metrics as metadata. A version's
metadata is fixed once saved, so the champion label lives beside the store in `genloop-aliases.json`,
replaced atomically: the champion, the champions before it (for rollback) and a history of changes.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

from tasks import paths
from tasks.errors import GenloopError
from tasks.storage import read_json, sha256_file, write_json

ALIASES = "genloop-aliases.json"
PREFIX = "genloop-"
FILES = ("model.safetensors", "model.json")


def home() -> Path:
    """The store's folder; set before bentoml is imported, which reads BENTOML_HOME once."""
    os.environ.setdefault("BENTOML_HOME", str((paths.STATE / "bentoml").resolve()))
    return Path(os.environ["BENTOML_HOME"])


def name_of(family: str) -> str:
    return f"{PREFIX}{family}"


def store():
    """bentoml, imported once BENTOML_HOME points at the registry."""
    home()
    import bentoml

    return bentoml


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def register(
    folder: Path, family: str, version: str, metadata: dict, labels: dict[str, str], extra: dict[str, Path]
) -> str:
    """Save the exported model in `folder` (and `extra` files by relative name: card, pictures) as
    version `version` of genloop-<family>; an existing version is left as it was. Returns the tag."""
    bentoml = store()
    tag = f"{name_of(family)}:{version}"
    try:
        bentoml.models.get(tag)
        return tag
    except bentoml.exceptions.NotFound:
        pass
    metadata = _no_none({**metadata, "weights_sha256": sha256_file(folder / FILES[0])})
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        for name, file in {**{f: folder / f for f in FILES}, **extra}.items():
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
    bentoml = store()
    try:
        return Path(bentoml.models.get(tag).path)
    except Exception as err:  # NotFound, BentoMLException on a malformed tag
        raise GenloopError(f"no model version {tag!r} in the registry ({home()}): {err}") from None


def info(tag: str) -> dict:
    """A version's tag, creation time, labels and metadata."""
    return _describe(store().models.get(tag))


def _describe(model) -> dict:
    return {
        "tag": str(model.tag),
        "created": model.info.creation_time.isoformat(timespec="seconds"),
        "labels": dict(model.info.labels),
        "metadata": dict(model.info.metadata),
    }


def versions() -> list[dict]:
    """Every genloop version in the store, oldest first, with its alias (champion / previous)."""
    bentoml = store()
    record = aliases()
    out = []
    for model in bentoml.models.list():
        if not model.tag.name.startswith(PREFIX):
            continue
        entry = record.get(model.tag.name, {})
        tag = str(model.tag)
        alias = "champion" if entry.get("champion") == tag else ""
        if tag in entry.get("previous", []):
            alias = "previous champion"
        out.append({**_describe(model), "path": model.path, "alias": alias})
    return sorted(out, key=lambda v: v["created"])


# --- the alias record ----------------------------------------------------------------------------
def aliases() -> dict:
    path = home() / ALIASES
    return read_json(path) if path.is_file() else {}


def champion(name: str) -> str | None:
    return aliases().get(name, {}).get("champion")


def promote(tag: str, reason: str) -> None:
    """Make `tag` the champion of its model name; the old champion becomes the rollback target."""
    name = tag.split(":")[0]
    record = aliases()
    entry = record.setdefault(name, {"champion": None, "previous": [], "history": []})
    if entry["champion"] == tag:
        return
    if entry["champion"]:
        entry["previous"].append(entry["champion"])
    entry["champion"] = tag
    entry["history"].append({"at": _now(), "event": "promote", "tag": tag, "reason": reason})
    write_json(home() / ALIASES, record)


def rollback(name: str) -> tuple[str, str]:
    """Return to the previous champion. Returns (demoted, restored)."""
    record = aliases()
    entry = record.get(name)
    if not entry or not entry.get("previous"):
        raise GenloopError(f"{name} has no previous champion to roll back to")
    demoted, restored = entry["champion"], entry["previous"].pop()
    entry["champion"] = restored
    entry["history"].append({"at": _now(), "event": "rollback", "tag": restored, "from": demoted})
    write_json(home() / ALIASES, record)
    return demoted, restored


def resolve(ref: str) -> Path:
    """A registered version's folder from `name:version`, `name:champion` or `name:latest`."""
    if ":" not in ref:
        raise GenloopError(f"{ref!r} is not a model version (expected e.g. genloop-gpt:champion)")
    name, version = ref.split(":", 1)
    if version == "champion":
        tag = champion(name)
        if tag is None:
            raise GenloopError(f"{name} has no champion yet (run evaluate first)")
        return folder(tag)
    return folder(ref)
