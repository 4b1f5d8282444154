"""The drift monitor's reference for one model version, kept beside its weights in the registry.

evaluate writes it into artifacts/evaluate/reference/ and registers it with the version (reference/ in
the version's folder, so in its Bento too):
- reference.npz: the features (models/features.py) of the training split (images: up to ROWS of the
  originals; text: ROWS snippets of the served sample length), of the model's own samples (images:
  with their classes) and for text of training snippets of prompt length (what requested prompts are
  compared with);
- reference.json: the data kind, the statistics' names, the training split's label shares, the image
  shape, row counts;
- featurizer.safetensors and featurizer.json (images): the eye that embeds every served sample, the
  same one that embedded the reference.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tasks.core.storage import read_json, write_json

ROWS = 2000  # per part: enough for a stable distribution, small enough to ship in a Bento
PROMPT_CHARS = (8, 64)  # the lengths of the text reference's prompts, uniform
FILE, INFO = "reference.npz", "reference.json"
PARTS = ("train", "samples", "prompts")


def snippets(text: str, n: int, length: tuple[int, int] | int, seed: int) -> list[str]:
    """n pieces of text at random places, each of `length` characters (or a length drawn uniformly)."""
    rng = np.random.default_rng(seed)
    low, high = (length, length) if isinstance(length, int) else length
    sizes = rng.integers(low, high + 1, size=n)
    starts = rng.integers(0, max(len(text) - high, 1), size=n)
    return [text[s : s + k] for s, k in zip(starts.tolist(), sizes.tolist(), strict=True)]


def build(split, model, samples, featurizer_dir: Path | None, sample_length: int, out: Path) -> Path:
    """Write the reference of `model` on `split` (tasks/quality/measure.py: Split) into `out`. Its own
    samples: for images ROWS fresh ones, classes in the training split's shares (seed 0); for text as
    many as its evaluation drew (`samples`), at the serving defaults."""
    from models.features import FEATURIZER_INFO, FEATURIZER_WEIGHTS, ImageFeaturizer, features, stat_names

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    kind, meta = split.kind, split.meta
    arrays: dict[str, np.ndarray] = {}
    info: dict = {"kind": kind, "stats": list(stat_names(kind))}
    rng = np.random.default_rng(0)
    if kind == "image":
        for name in (FEATURIZER_INFO, FEATURIZER_WEIGHTS):
            if featurizer_dir is not None and (featurizer_dir / name).is_file():
                shutil.copy2(featurizer_dir / name, out / name)
        eye = ImageFeaturizer.load(out) if (out / FEATURIZER_INFO).is_file() else ImageFeaturizer(None)
        x, y = split.arrays["train"]
        originals = meta.get("originals", {}).get("train", len(x))  # augmented copies follow them
        pick = rng.permutation(originals)[:ROWS]
        classes = [str(c) for c in meta.get("classes") or []]
        labels = y[:originals]
        known = labels[labels >= 0]
        condition = rng.choice(known, ROWS).tolist() if model.data.get("classes") and len(known) else None
        drawn = model.sample(ROWS, condition=condition, seed=0).cpu().numpy()
        parts = {"train": x[pick] / 255.0, "samples": drawn}
        # each sample's class: the monitor compares served samples with reference ones of the same mix
        arrays["samples_labels"] = np.array([classes[c] for c in condition] if condition else [], dtype=str)
        info["shape"] = list(x.shape[1:])
        info["labels"] = {c: float((known == i).mean()) for i, c in enumerate(classes)} if len(known) else {}
    else:
        text = split.text["train"]
        # at the serving defaults (model.gpt.temperature, top_k), as the service draws: not evaluate's
        drawn = model.sample(len(samples), seed=0, length=sample_length)
        prompt = len(drawn[0]) - sample_length
        parts = {
            "train": snippets(text, ROWS, sample_length, seed=1),
            "samples": [t[prompt:] for t in drawn],
            "prompts": snippets(text, ROWS, PROMPT_CHARS, seed=2),
        }
        info["labels"] = {}
        eye = None
    for part, items in parts.items():
        stats, embedding = features(kind, items, eye)
        arrays[f"{part}_stats"], arrays[f"{part}_embedding"] = stats, embedding
    info["rows"] = {part: len(arrays[f"{part}_stats"]) for part in parts}
    np.savez_compressed(out / FILE, **arrays)
    write_json(out / INFO, info)
    return out


def files(folder: Path) -> list[Path]:
    """The reference's files, for registering them with a version."""
    return sorted(p for p in folder.iterdir() if p.is_file())


class Reference:
    """A version's reference, read back from its folder (the registry's reference/)."""

    def __init__(self, folder: Path) -> None:
        if not (folder / INFO).is_file():
            raise FileNotFoundError(f"{folder} holds no drift reference ({INFO})")
        self.folder = folder
        self.info = read_json(folder / INFO)
        with np.load(folder / FILE) as data:
            self.arrays = {k: data[k] for k in data.files}

    @property
    def kind(self) -> str:
        return self.info["kind"]

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        if f"{name}_stats" not in self.arrays:
            return None
        return self.arrays[f"{name}_stats"], self.arrays[f"{name}_embedding"]
