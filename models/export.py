"""Building a family and moving a model to and from disk: weights as safetensors plus a JSON description,
so nothing on the load path unpickles. torch is imported inside the functions."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from models.families import family

WEIGHTS, DESCRIPTION = "model.safetensors", "model.json"


def build(name: str, config: dict[str, Any], data: dict[str, Any]):  # -> GenerativeModel
    """A fresh model of family `name`; `data` describes the dataset (shape and classes, or vocabulary).
    `config` holds every key of the family's Config (params.yaml's model.<name> section)."""
    return importlib.import_module(family(name).module).Model(config, data)


def save(model, folder: str | Path) -> None:
    """Weights as safetensors and the description (family, config, data) as JSON."""
    from safetensors.torch import save_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(model.net, str(folder / WEIGHTS), metadata={"family": model.family})  # handles tied weights
    description = {"family": model.family, "config": model.config, "data": model.data}
    (folder / DESCRIPTION).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")


def describe(folder: str | Path) -> dict[str, Any]:
    """An exported model's description; config keys added since it was exported get the value its
    family records for older exports (models/families.py: legacy)."""
    path = Path(folder) / DESCRIPTION
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not an exported model folder")
    d = json.loads(path.read_text())
    d["config"] = family(d["family"]).legacy | d["config"]
    return d


def load(folder: str | Path, map_location: str = "cpu", sha256: str | None = None):  # -> GenerativeModel
    """Rebuild an exported model on the device `map_location`: JSON for the shape, safetensors for the
    weights (no pickle); with `sha256`, the weights must have that hash (a registered version's
    `weights_sha256`), else ValueError."""
    if sha256 is not None:
        check_weights(Path(folder) / WEIGHTS, sha256)
    d = describe(folder)
    model = build(d["family"], d["config"], d["data"]).to(map_location)  # load_model copies into place
    load_weights(model.net, Path(folder) / WEIGHTS, map_location)
    return model.eval()


def check_weights(path: Path, sha256: str) -> None:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != sha256:
        raise ValueError(
            f"{path} does not match its weights_sha256 ({path.stat().st_size} bytes, damaged or incomplete): "
            "not loading it"
        )


def load_weights(net, path: str | Path, device: str = "cpu") -> None:
    """safetensors into an nn.Module, strict: every tensor must match by name and shape."""
    from safetensors.torch import load_model

    load_model(net, str(path), strict=True, device=device)  # raises on any mismatch
