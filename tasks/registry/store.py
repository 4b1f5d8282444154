"""The versions: BentoML's model store holds every evaluated model.

Every evaluated model is saved as a version of its model line (`genloop-<line>`: one family trained on
one dataset layout, tasks/core/params.py: line) in the store
(`$BENTOML_HOME`, by default `.genloop/bentoml` in the project) with its lineage and metrics as
metadata, its model card and pictures beside the weights. A version's metadata is fixed once saved:
which version is champion lives in the alias record (champions.py).

The store never holds half an item: a version (or a Bento, tasks/package.py) is written into its own
store under `staging/` and moved into place by one rename once complete; what a killed write leaves
in `staging/` is removed by the next one. A version's weights are checked against its
`weights_sha256` whenever it is registered, read, packaged or served.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tasks.core import paths
from tasks.core.errors import GenloopError
from tasks.core.storage import remove_orphans, sha256_file

PREFIX = "genloop-"
FILES = ("model.safetensors", "model.json", paths.TRAINING_RECORD)  # an exported model


def home() -> Path:
    """The store's folder; set before bentoml is imported, which reads BENTOML_HOME once."""
    os.environ.setdefault("BENTOML_HOME", str(paths.registry_home()))
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
    version `version` of line `line`; an existing intact version is left as it was, a damaged one
    (weights not matching their hash) is replaced. Returns the tag."""
    bento = bentoml()
    tag = f"{name_of(line)}:{version}"
    from tasks.registry import shared

    try:
        bento.models.get(tag)
        verify(tag)
        shared.share("models", tag)  # registered before site.remote was set: shared now
        return tag
    except bento.exceptions.NotFound:
        pass
    except GenloopError:
        bento.models.delete(tag)  # a damaged copy of what is being registered now: write it again
    metadata = _no_none({**metadata, "weights_sha256": sha256_file(folder / FILES[0])})
    files = {f: folder / f for f in FILES if (folder / f).is_file()}
    from bentoml._internal.models.model import ModelStore

    with staging("models") as (root, publish):
        with bento.models.create(
            tag, labels=labels, metadata=metadata, _model_store=ModelStore(root)
        ) as model:
            for name, file in {**files, **extra}.items():
                target = Path(model.path) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
        publish(tag)
    verify(tag)
    shared.share("models", tag)  # with site.remote: every machine can use it
    return tag


@contextlib.contextmanager
def staging(kind: str) -> Iterator[tuple[str, object]]:
    """A private store for one item of `kind` ("models" or "bentos") beside the real one, and
    `publish(tag)`, which moves the finished item into the real store in one rename."""
    real = _bentoml_home()
    root = real / "staging"
    root.mkdir(parents=True, exist_ok=True)
    remove_orphans(root, "")  # left by a killed write (its process is gone)
    tmp = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))

    def publish(tag: str) -> None:
        name, version = tag.split(":")
        target = real / kind / name / version
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp / name / version, target)  # atomic: the item is there whole, or not at all
        except OSError:
            if not target.is_dir():
                raise  # else a concurrent write of the same item got there first: keep that one
        latest = real / kind / name / "latest"
        latest.write_text(version)

    try:
        yield str(tmp), publish
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bentoml_home() -> Path:
    """The home BentoML itself uses (it reads BENTOML_HOME once, at import)."""
    bentoml()
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get())


def verify(tag: str) -> Path:
    """A version's folder, after checking its weights against the `weights_sha256` it was registered
    with: a clear error, never a half-copied model."""
    path = _folder(tag)
    expected = bentoml().models.get(tag).info.metadata.get("weights_sha256")
    weights = path / FILES[0]
    if not weights.is_file():
        raise GenloopError(f"model version {tag} is damaged: {weights} is missing")
    if expected is not None and sha256_file(weights) != expected:
        raise GenloopError(
            f"model version {tag} is damaged: {weights} does not match its weights_sha256 "
            f"({weights.stat().st_size} bytes): `genloop stage evaluate` registers it again, or delete it "
            f"with `bentoml models delete {tag}`"
        )
    return path


def _no_none(obj):
    """BentoML metadata takes no None: leave such keys out (readers treat a missing key as None)."""
    if isinstance(obj, dict):
        return {k: _no_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [_no_none(v) for v in obj if v is not None]
    return obj


def folder(tag: str) -> Path:
    """The folder holding a version's model.safetensors and model.json, its weights checked."""
    return verify(tag)


def _folder(tag: str) -> Path:
    """A version's folder here; one that another machine registered is imported from site.remote."""
    from tasks.registry import shared

    bento = bentoml()
    try:
        return Path(bento.models.get(tag).path)
    except bento.exceptions.NotFound as err:
        if shared.found_elsewhere("models", tag):
            return Path(bento.models.get(tag).path)
        raise GenloopError(f"no model version {tag!r} in the registry ({home()}): {err}") from None
    except Exception as err:  # BentoMLException on a malformed tag
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
