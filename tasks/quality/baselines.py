"""Baselines measured beside every model on the same split: what a model must beat to be worth serving.

Images: a Gaussian mixture density (scikit-learn, full covariances) on dequantised pixels, reporting the
same bound on the 8-bit negative log-likelihood in bits per dimension as the VAE, and samples for the
Fréchet distance. Text: an interpolated character n-gram model with Witten-Bell smoothing, in bits per
character like the GPT.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np


def dequantise(x_uint8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, D) floats (k + u) / 256, u ~ U[0, 1), as the VAE sees them."""
    k = x_uint8.reshape(len(x_uint8), -1).astype(np.float64)
    return (k + rng.random(k.shape)) / 256


class GaussianMixtureBaseline:
    def __init__(self, components: int, seed: int) -> None:
        from sklearn.mixture import GaussianMixture

        self.seed = seed
        # reg_covar keeps pixels that never change (digit borders) from collapsing the covariance
        self.gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-6, random_state=seed)

    def fit(self, train_uint8: np.ndarray) -> GaussianMixtureBaseline:
        self.shape = train_uint8.shape[1:]
        self.gmm.fit(dequantise(train_uint8, np.random.default_rng(self.seed)))
        return self

    def bits_per_dim(self, x_uint8: np.ndarray) -> float:
        """Upper bound on the 8-bit images' NLL: (D log 256 - log p(v)) / (D log 2), averaged."""
        d = math.prod(self.shape)
        log_p = self.gmm.score_samples(dequantise(x_uint8, np.random.default_rng(self.seed + 1)))
        return float(np.mean((d * math.log(256) - log_p) / (d * math.log(2))))

    def sample(self, n: int) -> np.ndarray:
        """n images (n, C, H, W) in [0, 1]."""
        self.gmm.random_state = self.seed + 2
        x, _ = self.gmm.sample(n)
        return np.clip(x, 0, 1).reshape(n, *self.shape).astype(np.float32)


class CharNGram:
    """Interpolated character n-gram model, Witten-Bell smoothing (Witten & Bell 1991).

    P(c | h) = (count(h, c) + types(h) * P(c | shorter h)) / (count(h) + types(h)), down to a uniform
    distribution over the vocabulary, so every character of the vocabulary has non-zero probability.
    """

    def __init__(self, order: int, vocab: list[str]) -> None:
        self.order, self.vocab = order, vocab
        self.counts: list[dict[str, Counter]] = [defaultdict(Counter) for _ in range(order)]

    def fit(self, text: str) -> CharNGram:
        for n in range(self.order):  # n characters of history
            table = self.counts[n]
            for i in range(n, len(text)):
                table[text[i - n : i]][text[i]] += 1
        self.totals = [{h: (sum(c.values()), len(c)) for h, c in t.items()} for t in self.counts]
        return self

    def prob(self, history: str, ch: str) -> float:
        p = 1.0 / len(self.vocab)
        for n in range(self.order):
            if n > len(history):
                break
            h = history[len(history) - n :] if n else ""
            total = self.totals[n].get(h)
            if total is None:
                continue
            count, types = total
            p = (self.counts[n][h][ch] + types * p) / (count + types)
        return p

    def bits_per_char(self, text: str) -> float:
        """Average -log2 P(c | the previous order-1 characters) over `text` (its first characters use
        the shorter histories available)."""
        k = self.order - 1
        total = sum(-math.log2(self.prob(text[max(0, i - k) : i], text[i])) for i in range(len(text)))
        return total / max(len(text), 1)
