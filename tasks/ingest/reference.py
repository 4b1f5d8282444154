"""A dataset's reference: the schema its first batch that passed validation had, enforced on every later
batch of the same source (so a new class or a new image size later is a clear failure, not a quietly
different model).

Validate's expectations default to `auto` (params.yaml: validate.image.height, width, channels, labels;
validate.text.charset). An explicit value in params.yaml always wins; `auto` takes the reference's value
or, for the first batch of a dataset, what that batch holds (its majority image shape, the labels of its
folders, its characters). The reference is one JSON file per dataset in artifacts/validate/reference/
(a DVC output kept between runs); delete it to record a new one from the next batch that passes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tasks.core import paths
from tasks.core.datasets import name as dataset_name
from tasks.core.storage import read_json, write_json

FOLDER = paths.VALIDATE / "reference"


def path_of(source: str) -> Path:
    return FOLDER / f"{dataset_name(source)}.json"


def load(source: str) -> dict | None:
    path = path_of(source)
    return read_json(path) if path.is_file() else None


def record(source: str, schema: dict, manifest_sha256: str) -> Path:
    """Keep the schema of a batch that passed as its dataset's reference (deterministic: no time, so the
    same data gives the same file and DVC sees no change)."""
    path = path_of(source)
    origin = {"dataset": dataset_name(source), "source": source, "recorded_from": manifest_sha256}
    write_json(path, origin | schema)
    return path


@dataclass(frozen=True)
class Expected:
    """One expected value and where it came from, for the messages."""

    value: object
    origin: str  # "params" | "reference" | "first batch"
    param: str  # the key in params.yaml that sets it

    def said(self) -> str:
        return {
            "params": f"{self.param} in params.yaml",
            "reference": "the dataset's reference, recorded from its first batch that passed",
            "first batch": "most of this batch, the dataset's first",
        }[self.origin]


def resolve(param_value, reference: dict | None, key: str, observed, param: str) -> Expected:
    """The expected value of one schema key: params.yaml's unless `auto`, then the reference's, then what
    this (first) batch shows."""
    if param_value != "auto":
        return Expected(param_value, "params", param)
    if reference is not None and key in reference:
        return Expected(reference[key], "reference", param)
    return Expected(observed, "first batch", param)


def majority(values: list) -> object:
    """The most common value (ties: the first seen), or None for no values."""
    return Counter(values).most_common(1)[0][0] if values else None
