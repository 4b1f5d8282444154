"""Measuring a model on the held-out test split, beside its baseline and the real-data floor.

Everything a model is measured against is prepared once per run (`Measure`) and shared by challenger,
champion, baseline and floor, so they are compared on the same data by the same featurizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.core import paths
from tasks.core.datasets import SPLITS, load_splits
from tasks.core.params import EvaluateParams
from tasks.core.storage import write_json


@dataclass
class Split:
    """The evaluation data: test (measured on), train (copies of it are memorisation), val (the floor)."""

    meta: dict
    arrays: dict[str, tuple[np.ndarray, np.ndarray | None]]
    text: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.meta["kind"]


def load_split(processed: Path = paths.PROCESSED) -> Split:
    meta, arrays = load_splits(processed, SPLITS)
    if meta["kind"] == "image":
        return Split(meta, arrays)
    vocab = np.array(meta["vocab"])
    return Split(meta, arrays, {s: "".join(vocab[a]) for s, (a, _) in arrays.items()})


class Measure:
    """All metrics of models, baselines and real data on one split, with one evaluation's settings."""

    def __init__(self, split: Split, ev: EvaluateParams, featurizer_dir: Path) -> None:
        from tasks.quality import metrics

        self.split, self.ev = split, ev
        if split.kind == "image":
            from tasks.quality import featurizer

            (xtr, ytr), (xte, yte) = split.arrays["train"], split.arrays["test"]
            # its own fixed seed: the featurizer belongs to the data, not to one evaluation's settings
            self.features, self.featurizer = featurizer.ensure(featurizer_dir, (xtr, ytr), (xte, yte), seed=0)
            self.train_px, self.test_px = xtr / 255.0, xte / 255.0
            self.test_features = self.features(self.test_px)
            self.copy_threshold = metrics.copy_threshold(self.test_px, self.train_px, ev.copy_quantile)
        else:
            self.featurizer = {"kind": "none", "reason": "text is compared by character n-grams"}
            write_json(
                featurizer_dir / "featurizer.json", self.featurizer
            )  # the stage's output, always there
            self.train_words = set(metrics.words(split.text["train"]))
            self.spans = metrics.SpanIndex(split.text["train"], ev.text.copy_span)

    def samples(self, images: np.ndarray) -> dict:
        """Sample metrics of images (N, C, H, W) in [0, 1] against the test split."""
        from tasks.quality import metrics

        f = self.features(images)
        precision, recall = metrics.precision_recall(self.test_features, f, self.ev.knn_k)
        return {
            "fd": metrics.frechet_distance(self.test_features, f),
            "precision": precision,
            "recall": recall,
            "diversity": metrics.diversity(f),
            "memorised": metrics.memorised_share(images, self.train_px, self.copy_threshold),
        }

    def texts(self, texts: list[str]) -> dict:
        from tasks.quality import metrics

        return {
            "ngram_divergence": metrics.ngram_divergence(texts, self.split.text["test"], self.ev.text.ngram),
            "valid_word_rate": metrics.valid_word_rate(texts, self.train_words),
            "memorised": metrics.copied_share(texts, self.spans),
        }

    def model(self, model) -> tuple[dict, object]:
        """All metrics of a model, and its samples (images array or list of texts)."""
        import torch

        ev = self.ev
        if self.split.kind == "image":
            x, y = self.split.arrays["test"]
            condition = y.tolist() if model.data.get("classes") else None  # the test split's class mix
            images = model.sample(len(x), condition=condition, seed=ev.seed).cpu().numpy()
            out = self.samples(images)
            if hasattr(model, "nll"):  # a likelihood model: its bound on the 8-bit images' NLL
                xt = torch.as_tensor(x, dtype=torch.float32) / 255
                nll = model.nll(xt, torch.as_tensor(y) if condition else None, ev.importance_samples, ev.seed)
                out["nll_bits_per_dim"] = float(model.bits_per_dim(nll).mean())
            return out, images
        ids = torch.as_tensor(self.split.arrays["test"][0].astype(np.int64))
        raw = model.sample(ev.text.samples, seed=ev.seed, length=ev.text.length)
        prompt_len = len(raw[0]) - ev.text.length
        texts = [t[prompt_len:] for t in raw]  # judge what the model wrote, not the prompt
        return {"bits_per_char": model.bits_per_char(ids), **self.texts(texts)}, texts

    def floor(self) -> dict:
        """Held-out real data (val) measured like samples: the best a sample metric can be here."""
        if self.split.kind == "image":
            x = self.split.arrays["val"][0]
            n = min(len(x), len(self.test_px))
            return self.samples(x[:n] / 255.0)
        val, n, length = self.split.text["val"], self.ev.text.samples, self.ev.text.length
        starts = np.linspace(0, max(0, len(val) - length), n).astype(int)
        return self.texts([val[s : s + length] for s in starts])

    def baseline(self, kind: str) -> dict:
        """The family's classical baseline (models/families.py: baseline), fitted on the training split."""
        from tasks.quality import baselines

        b = self.ev.baseline
        if kind == "gaussian_mixture":
            xtr, xte = self.split.arrays["train"][0], self.split.arrays["test"][0]
            gmm = baselines.GaussianMixtureBaseline(b.gmm_components, self.ev.seed).fit(xtr)
            out = {"model": f"Gaussian mixture, {b.gmm_components} components, full covariance"}
            out |= {"nll_bits_per_dim": gmm.bits_per_dim(xte), **self.samples(gmm.sample(len(xte)))}
            return out
        if kind == "char_ngram":
            ngram = baselines.CharNGram(b.ngram_order, self.split.meta["vocab"]).fit(self.split.text["train"])
            return {
                "model": f"character {b.ngram_order}-gram, Witten-Bell smoothing",
                "bits_per_char": ngram.bits_per_char(self.split.text["test"]),
            }
        raise ValueError(f"unknown baseline {kind!r}")
