"""Baselines measured beside every model on the same split: what a model must beat to be worth serving.

Each is fitted properly, its capacity chosen on the validation split, so a model is judged against the
strongest classical model of its kind, not a careless one:
- Images: a Gaussian mixture density (scikit-learn, full covariances) on dequantised pixels, its number
  of components and covariance regularisation chosen by held-out likelihood. It reports the same bound on
  the 8-bit negative log-likelihood in bits per dimension as the VAE, and samples for the sample metrics.
  Beside it, every pixel an independent Gaussian over the same dequantised values: the simplest density
  of that kind. A mixture that does worse than that on held-out images is a degenerate fit (a
  covariance collapsed on pixels that never changed in training) and is reported as such.
- Text: an interpolated character n-gram model with Witten-Bell smoothing, its order chosen on the
  validation split, in bits per character like the GPT; it also writes samples.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np


def dequantise(x_uint8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, D) floats (k + u) / 256, u ~ U[0, 1), as the VAE sees them."""
    k = x_uint8.reshape(len(x_uint8), -1).astype(np.float64)
    return (k + rng.random(k.shape)) / 256


# Up to this many pixels a mixture's components have full covariances; beyond, diagonal ones (a full
# 28x28 covariance costs D^2 = 600,000 numbers a component and an EM step grows with D^2 too).
FULL_COVARIANCE_UP_TO = 256


class GaussianMixtureBaseline:
    def __init__(self, components: int, reg_covar: float, seed: int, covariance: str | None = None) -> None:
        self.seed, self.components, self.reg_covar, self.covariance = seed, components, reg_covar, covariance

    def fit(self, train_uint8: np.ndarray) -> GaussianMixtureBaseline:
        from sklearn.mixture import GaussianMixture

        self.shape = train_uint8.shape[1:]
        if self.covariance is None:
            self.covariance = "full" if math.prod(self.shape) <= FULL_COVARIANCE_UP_TO else "diag"
        # reg_covar adds a floor to every variance: pixels that never change in training (a digit's
        # border) otherwise collapse the covariance, and any test image that differs there scores as
        # impossibly unlikely
        self.gmm = GaussianMixture(
            self.components, covariance_type=self.covariance, reg_covar=self.reg_covar, random_state=self.seed
        )
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
        x, _ = self.gmm.sample(n)  # sklearn returns them grouped by component: shuffle, so that any
        x = x[np.random.default_rng(self.seed + 3).permutation(n)]  # slice is a fair draw
        return np.clip(x, 0, 1).reshape(n, *self.shape).astype(np.float32)

    def describe(self) -> str:
        return (
            f"Gaussian mixture, {self.components} components, {self.covariance} covariance + "
            f"{self.reg_covar:g} I (chosen on the validation split)"
        )


def fit_gaussian_mixture(
    train: np.ndarray, val: np.ndarray, components: list[int], reg_covars: list[float], seed: int
) -> tuple[GaussianMixtureBaseline, dict]:
    """The mixture of best held-out likelihood on `val` among every (components, regularisation); a
    choice with more components than half the training images is skipped."""
    tried: dict[str, float | None] = {}
    best, best_score = None, math.inf
    for k in components:
        if k > max(1, len(train) // 2):
            continue
        for reg in reg_covars:
            candidate = GaussianMixtureBaseline(k, reg, seed).fit(train)
            score = candidate.bits_per_dim(val)
            tried[f"{k} x {reg:g}"] = round(score, 4) if math.isfinite(score) else None
            if math.isfinite(score) and score < best_score:
                best, best_score = candidate, score
    if best is None:
        raise ValueError("no Gaussian mixture could be fitted to the training images")
    return best, tried


def fit_independent_pixels(
    train: np.ndarray, val: np.ndarray, reg_covars: list[float], seed: int
) -> GaussianMixtureBaseline:
    """Every pixel an independent Gaussian (one component, diagonal covariance), its variance floor
    chosen on `val`: the plausibility floor of a mixture over the same dequantised pixels."""
    fitted = [GaussianMixtureBaseline(1, reg, seed, covariance="diag").fit(train) for reg in reg_covars]
    return min(fitted, key=lambda m: m.bits_per_dim(val))


class CharNGram:
    """Interpolated character n-gram model, Witten-Bell smoothing (Witten & Bell 1991).

    P(c | h) = (count(h, c) + types(h) * P(c | shorter h)) / (count(h) + types(h)), down to a uniform
    distribution over the vocabulary, so every character of the vocabulary has non-zero probability.
    Fitted once up to `max_order`; `order` (at most that) is the one used.
    """

    def __init__(self, max_order: int, vocab: list[str]) -> None:
        self.order = self.max_order = max_order
        self.vocab = vocab
        self.index = {ch: i for i, ch in enumerate(vocab)}
        self.counts: list[dict[str, Counter]] = [defaultdict(Counter) for _ in range(max_order)]

    def fit(self, text: str) -> CharNGram:
        for n in range(self.max_order):  # n characters of history
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

    def distribution(self, history: str) -> np.ndarray:
        """P(. | history) over the whole vocabulary, by the same recursion as `prob`."""
        p = np.full(len(self.vocab), 1.0 / len(self.vocab))
        for n in range(min(self.order, len(history) + 1)):
            h = history[len(history) - n :] if n else ""
            total = self.totals[n].get(h)
            if total is None:
                continue
            count, types = total
            seen = np.zeros(len(self.vocab))
            for ch, c in self.counts[n][h].items():
                seen[self.index[ch]] = c
            p = (seen + types * p) / (count + types)
        return p

    def sample(self, n: int, length: int, seed: int, prompt: str = "\n") -> list[str]:
        """n texts of `length` characters drawn from the model, continuing `prompt`."""
        rng = np.random.default_rng(seed)
        texts = []
        for _ in range(n):
            text = prompt
            for _ in range(length):
                p = self.distribution(text[-(self.order - 1) :] if self.order > 1 else "")
                text += self.vocab[rng.choice(len(p), p=p / p.sum())]
            texts.append(text[len(prompt) :])
        return texts


def fit_char_ngram(train: str, val: str, vocab: list[str], max_order: int) -> tuple[CharNGram, dict]:
    """The n-gram of best held-out bits/char on `val`, orders 1 to `max_order` (fitted once)."""
    model = CharNGram(max_order, vocab).fit(train)
    tried = {}
    for order in range(1, max_order + 1):
        model.order = order
        tried[order] = round(model.bits_per_char(val), 4)
    model.order = min(tried, key=tried.get)
    return model, tried
