"""The registry shared through site.remote: versions and Bentos exported with BentoML's own export,
imported on use by another machine.

Each item is two objects under `<site.remote>/registry/<models|bentos>/<name>/`: the archive
(`<version>-<sha256>.tar.gz`, BentoML's export, named by its content) and, written only after the
archive is whole, its manifest (`<version>.json`: the archive's name, sha256 and size, and for a
version its weights' sha256). An item without a manifest was never finished (an export killed half
way): no machine sees it. Two machines exporting the same item at once each upload their own archive,
so whichever manifest lands last names an archive that is there and matches it. An import checks the
archive against the manifest, imports it into a staging store, checks the weights there against the
manifest, and moves it into the real store in one rename (store.staging).
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path

from tasks.core import objects, site
from tasks.core.errors import GenloopError
from tasks.core.storage import sha256_file
from tasks.registry import store

KINDS = ("models", "bentos")


def remote() -> str | None:
    return site.current().remote


def _base(remote_url: str, kind: str, tag: str) -> str:
    name, version = tag.split(":")
    return site.join(remote_url, "registry", kind, name, version)


def manifest(kind: str, tag: str, remote_url: str | None = None) -> dict | None:
    """The manifest of a finished export of `tag`, or None (no remote, never exported, or unfinished)."""
    remote_url = remote_url or remote()
    if not remote_url:
        return None
    data = objects.read(_base(remote_url, kind, tag) + ".json")
    return json.loads(data) if data is not None else None


def export(kind: str, tag: str, remote_url: str | None = None) -> bool:
    """Export `tag` (a version of kind "models", or a Bento) to the remote, unless it is there already;
    returns whether it wrote it."""
    remote_url = remote_url or remote()
    if not remote_url or manifest(kind, tag, remote_url) is not None:
        return False
    bentoml = store.bentoml()
    base = _base(remote_url, kind, tag)
    with tempfile.TemporaryDirectory(prefix="genloop-export-") as tmp:
        target = f"{tmp}/{tag.split(':')[1]}.tar.gz"
        if kind == "models":
            path = Path(bentoml.models.export_model(tag, target, output_format="gz"))
        else:
            path = Path(bentoml.bentos.export_bento(tag, target, output_format="gz"))
        digest = sha256_file(path)
        entry = {
            "tag": tag,
            "kind": kind,
            "archive": f"{base.rsplit('/', 1)[1]}-{digest[:16]}.tar.gz",
            "archive_sha256": digest,
            "size": path.stat().st_size,
            "exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        if kind == "models":
            entry["weights_sha256"] = store.info(tag)["metadata"].get("weights_sha256")
        objects.upload(path, f"{base.rsplit('/', 1)[0]}/{entry['archive']}")
    objects.write(base + ".json", json.dumps(entry, indent=1).encode())  # last: the export is whole
    return True


def fetch(kind: str, tag: str, remote_url: str | None = None) -> bool:
    """Import `tag` from the remote into this machine's store, checked; False when the remote has no
    finished export of it."""
    remote_url = remote_url or remote()
    entry = manifest(kind, tag, remote_url)
    if entry is None:
        return False
    bentoml = store.bentoml()
    archive_url = f"{_base(remote_url, kind, tag).rsplit('/', 1)[0]}/{entry['archive']}"
    with tempfile.TemporaryDirectory(prefix="genloop-import-") as tmp:
        path = Path(tmp) / "item.tar.gz"
        objects.download(archive_url, path)
        if sha256_file(path) != entry["archive_sha256"]:
            raise GenloopError(f"{archive_url} does not match its manifest's sha256: not imported")
        with store.staging(kind) as (root, publish):
            if kind == "models":
                from bentoml._internal.models.model import ModelStore

                model = bentoml.models.import_model(str(path), _model_store=ModelStore(root))
                weights = Path(model.path) / store.FILES[0]
                expected = entry.get("weights_sha256")
                if (
                    not weights.is_file()
                    or sha256_file(weights) != expected
                    or (model.info.metadata.get("weights_sha256") != expected)
                ):  # checked before it is published: a bad import never reaches the store
                    raise GenloopError(f"model version {tag} from {remote_url} does not match its manifest")
            else:
                from bentoml._internal.bento.bento import BentoStore

                bentoml.bentos.import_bento(str(path), _bento_store=BentoStore(root))
            publish(tag)
    return True


def exported(kind: str, remote_url: str | None = None) -> list[str]:
    """Every finished export of `kind` on the remote, as tags."""
    remote_url = remote_url or remote()
    if not remote_url:
        return []
    out = []
    for url in objects.listing(site.join(remote_url, "registry", kind)):
        if url.endswith(".json"):
            name, version = url.removesuffix(".json").split("/")[-2:]
            out.append(f"{name}:{version}")
    return sorted(out)


def share(kind: str, tag: str) -> None:
    """After registering or building `tag` here: export it when a site is set (say what failed)."""
    try:
        export(kind, tag)
    except GenloopError as err:
        raise GenloopError(f"{tag} is in this machine's store but not shared: {err}") from None


def found_elsewhere(kind: str, tag: str) -> bool:
    """`tag` is not in this machine's store: import it from the remote when a site is set."""
    return bool(remote()) and fetch(kind, tag)
