"""Measuring a model on the held-out test split, beside its baseline and the real-data floor.

Everything a model is measured against is prepared once per run (`Measure`) and shared by challenger,
champion, baseline and floor, so they are compared on the same data by the same featurizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.core import paths
from tasks.core.datasets import SPLITS, load_splits
from tasks.core.params import EvaluateParams
from tasks.core.storage import content_hash, read_json, sha256_bytes, write_json

# the code a cached baseline was measured with: a change in it measures the baseline again
CODE = ("baselines.py", "measure.py", "metrics.py", "featurizer.py")


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

    def __init__(
        self, split: Split, ev: EvaluateParams, featurizer_dir: Path, cache: Path | None = None
    ) -> None:
        from tasks.quality import metrics

        self.split, self.ev, self.cache = split, ev, cache
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
        """Sample metrics of images (N, C, H, W) in [0, 1] against the test split: each the mean over
        draws of the test split's size (as many as N holds), so that every figure is measured at the
        same sample size as real data's, whose finite-sample bias (FD's above all) it shares, while the
        noise of one draw averages out."""
        from models import cores
        from tasks.quality import metrics

        n = len(self.test_px)
        per_draw = []
        for start in range(0, max(len(images) - n, 0) + 1, n):
            cores.follow()
            draw = images[start : start + n]
            f = self.features(draw)
            precision, recall = metrics.precision_recall(self.test_features, f, self.ev.knn_k)
            per_draw.append(
                {
                    "fd": metrics.frechet_distance(self.test_features, f),
                    "precision": precision,
                    "recall": recall,
                    "diversity": metrics.diversity(f),
                    "memorised": metrics.memorised_share(draw, self.train_px, self.copy_threshold),
                }
            )
        return {k: float(np.mean([d[k] for d in per_draw])) for k in per_draw[0]}

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

        from models import cores

        cores.follow()
        ev = self.ev
        if self.split.kind == "image":
            x, y = self.split.arrays["test"]
            condition = y.tolist() if model.data.get("classes") else None  # the test split's class mix
            draws = condition * ev.image_draws if condition else None
            images = model.sample(len(x) * ev.image_draws, condition=draws, seed=ev.seed).cpu().numpy()
            out = self.samples(images)
            images = images[: len(x)]  # one draw is the model's samples for pictures
            if hasattr(model, "nll"):  # a likelihood model: its bound on the 8-bit images' NLL
                xt = torch.as_tensor(x, dtype=torch.float32) / 255
                nll = model.nll(xt, torch.as_tensor(y) if condition else None, ev.importance_samples, ev.seed)
                out["nll_bits_per_dim"] = float(model.bits_per_dim(nll).mean())
            return out, images
        ids = torch.as_tensor(self.split.arrays["test"][0].astype(np.int64))
        # at evaluate.text.temperature, not the serving default (model.gpt.temperature): the n-gram
        # baseline's samples are drawn from its own distribution, and so are these
        raw = model.sample(
            ev.text.samples, seed=ev.seed, length=ev.text.length, temperature=ev.text.temperature, top_k=0
        )
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

    def baseline(self, kind: str) -> tuple[dict, object]:
        """The family's classical baseline (models/families.py: baseline), fitted on the training split
        with its capacity chosen on the validation split, measured like the model, and its samples.
        `degenerate` lists the figures that do not deserve the name (a mixture worse than independent
        Gaussian pixels). It depends on the data and the evaluate settings only, not on the model, so it
        is kept in `cache` and fitted again only when one of those (or its code) changes."""
        stamp = content_hash(
            {
                "data": {
                    s: [sha256_bytes(a.tobytes()) for a in xy if a is not None]
                    for s, xy in self.split.arrays.items()
                },
                "kind": kind,
                "evaluate": self.ev.model_dump(exclude={"gate"}),
                "featurizer": self.featurizer.get("fingerprint"),
                "code": [sha256_bytes(Path(__file__).with_name(f).read_bytes()) for f in CODE],
            }
        )
        image = self.split.kind == "image"
        figures_path = self.cache / "baseline.json" if self.cache else None
        samples_path = self.cache / ("samples.npy" if image else "samples.json") if self.cache else None
        if figures_path is not None and figures_path.is_file() and samples_path.is_file():
            kept = read_json(figures_path)
            if kept.get("fingerprint") == stamp:
                drawn = np.load(samples_path) if image else read_json(samples_path)["samples"]
                return kept["figures"], drawn
        figures, drawn = self.fit_baseline(kind)
        if figures_path is not None:
            samples_path.parent.mkdir(parents=True, exist_ok=True)
            if image:
                np.save(samples_path, drawn.astype(np.float32))
            else:
                write_json(samples_path, {"samples": drawn})
            write_json(figures_path, {"fingerprint": stamp, "figures": figures})
        return figures, drawn

    def fit_baseline(self, kind: str) -> tuple[dict, object]:
        """The baseline's figures and its samples (images or texts)."""
        from tasks.quality import baselines

        b, (xtr, _), (xva, _), (xte, _) = self.ev.baseline, *(self.split.arrays[s] for s in SPLITS)
        if kind == "gaussian_mixture":
            gmm, tried = baselines.fit_gaussian_mixture(
                xtr, xva, b.gmm_components, b.gmm_reg_covar, self.ev.seed
            )
            pixels = baselines.fit_independent_pixels(xtr, xva, b.gmm_reg_covar, self.ev.seed)
            out = {"model": gmm.describe(), "tried": tried, "nll_bits_per_dim": gmm.bits_per_dim(xte)}
            out["per_pixel_bits_per_dim"] = pixels.bits_per_dim(xte)
            drawn = gmm.sample(len(xte) * self.ev.image_draws)
            out |= self.samples(drawn)
            drawn = drawn[: len(xte)]
            out["degenerate"] = [k for k, v in out.items() if isinstance(v, float) and not math.isfinite(v)]
            if not out["nll_bits_per_dim"] < out["per_pixel_bits_per_dim"]:
                out["degenerate"].append("nll_bits_per_dim")
            return out, drawn
        if kind == "char_ngram":
            text = self.split.text
            ngram, tried = baselines.fit_char_ngram(
                text["train"], text["val"], self.split.meta["vocab"], b.ngram_max_order
            )
            drawn = ngram.sample(self.ev.text.samples, self.ev.text.length, self.ev.seed)
            out = {
                "model": f"character {ngram.order}-gram, Witten-Bell smoothing (order chosen on validation)",
                "tried": tried,
                "bits_per_char": ngram.bits_per_char(text["test"]),
                **self.texts(drawn),
            }
            out["degenerate"] = [k for k, v in out.items() if isinstance(v, float) and not math.isfinite(v)]
            return out, drawn
        raise ValueError(f"unknown baseline {kind!r}")
