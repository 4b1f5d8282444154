"""The features the drift monitor compares, from this one module wherever they are computed: a model
version's reference at evaluate (its training data, its own samples), every sample the service returns,
and a newly collected batch. Each sample gets a few named statistics and one embedding vector.

- images: the featurizer's embedding (the small classifier of image metrics, or the pixels when the
  data has no labels) and the mean, spread and ink (share of pixels above 0.5) of the pixels;
- text: its length and character-class shares, mean word length, and as its embedding the shares of
  its character bigrams hashed into NGRAM_BUCKETS buckets (summed over a window, the window's bigram
  distribution).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a net runs: the monitor's text paths never need it
    import torch

IMAGE_STATS = ("mean", "std", "ink")
TEXT_STATS = ("length", "letters", "digits", "spaces", "punctuation", "upper", "word_length")
NGRAM_BUCKETS = 64
FEATURIZER_WEIGHTS, FEATURIZER_INFO = "featurizer.safetensors", "featurizer.json"
_PUNCTUATION = frozenset(string.punctuation)


def stat_names(kind: str) -> tuple[str, ...]:
    return IMAGE_STATS if kind == "image" else TEXT_STATS


class ImageFeaturizer:
    """images (N, C, H, W) in [0, 1] -> the classifier's penultimate layer (N, D), or the pixels."""

    def __init__(self, net: torch.nn.Module | None = None) -> None:
        self.net = net

    @classmethod
    def load(cls, folder: Path) -> ImageFeaturizer:
        """From featurizer.json and featurizer.safetensors (tasks/quality/featurizer.py writes them)."""
        info = json.loads((Path(folder) / FEATURIZER_INFO).read_text())
        if info.get("kind") != "classifier":
            return cls(None)
        from models.classifier import Classifier, Config
        from models.export import load_weights

        net = Classifier(Config(**info["config"]))
        load_weights(net, Path(folder) / FEATURIZER_WEIGHTS)
        return cls(net.eval())

    def __call__(self, images: np.ndarray, batch: int = 512) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if self.net is None:
            return images.reshape(len(images), int(np.prod(images.shape[1:])))
        import torch

        with torch.inference_mode():
            out = [
                self.net.features(torch.as_tensor(images[i : i + batch])).numpy()
                for i in range(0, len(images), batch)
            ]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def image_features(images: np.ndarray, featurizer: ImageFeaturizer) -> tuple[np.ndarray, np.ndarray]:
    """(stats (N, 3), embedding (N, D)), float32, of images (N, C, H, W) in [0, 1]."""
    x = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    stats = np.stack([x.mean(1), x.std(1), (x > 0.5).mean(1)], axis=1) if len(x) else np.zeros((0, 3))
    return stats.astype(np.float32), featurizer(images).astype(np.float32)


def bigram_buckets(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Each bigram's bucket (code points as uint64): a fixed multiplicative hash, the top 6 bits of a
    64-bit product (Fibonacci hashing), so that no two character classes share buckets wholesale
    (a plain (31a + b) % 64 puts 'p' with '0') and every process agrees (str's hash() does not)."""
    with np.errstate(over="ignore"):  # the products wrap around 2**64 on purpose
        mixed = (first * np.uint64(1_000_003)) ^ second
        return ((mixed * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(58)).astype(np.int64)


def text_features(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(stats (N, 7), bigram shares (N, NGRAM_BUCKETS)), float32, of texts."""
    stats = np.zeros((len(texts), len(TEXT_STATS)), np.float32)
    grams = np.zeros((len(texts), NGRAM_BUCKETS), np.float32)
    for i, text in enumerate(texts):
        n = max(len(text), 1)
        words = text.split()
        stats[i] = (
            len(text),
            sum(c.isalpha() for c in text) / n,
            sum(c.isdigit() for c in text) / n,
            sum(c.isspace() for c in text) / n,
            sum(c in _PUNCTUATION for c in text) / n,
            sum(c.isupper() for c in text) / n,
            sum(map(len, words)) / max(len(words), 1),
        )
        if len(text) > 1:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
            buckets = bigram_buckets(codes[:-1], codes[1:])
            grams[i] = np.bincount(buckets, minlength=NGRAM_BUCKETS) / (len(text) - 1)
    return stats, grams


def features(kind: str, samples, featurizer: ImageFeaturizer | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The features of one family's samples: images (N, C, H, W) in [0, 1], or a list of texts."""
    if kind == "image":
        return image_features(samples, featurizer or ImageFeaturizer(None))
    return text_features(list(samples))
