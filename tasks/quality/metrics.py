"""Sample-quality metrics for generative models, each a plain function with a known answer on easy cases.

Images are compared in the feature space of the dataset's own small classifier (featurizer.py):
the Fréchet distance (the digits analogue of FID, computed by torchmetrics), k-NN precision and recall
(Kynkäänniemi et al. 2019) and diversity. Memorisation is measured in pixel space, where a copy is a
copy. Text is compared by character n-gram distributions, the rate of known words and verbatim copies.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

WORD = re.compile(r"[A-Za-z]{2,}")

# What each figure in metrics.json, decision.json and the model card measures.
UNITS = {
    "nll_bits_per_dim": "bits/dim (8-bit pixels, importance-weighted bound on the NLL)",
    "bits_per_char": "bits/char",
    "fd": "Fréchet distance (featurizer space)",
    "precision": "k-NN precision",
    "recall": "k-NN recall",
    "diversity": "mean pairwise feature distance",
    "memorised": "share of samples counted as copies",
    "ngram_divergence": "Jensen-Shannon divergence of char n-grams (bits)",
    "valid_word_rate": "share of words seen in training",
}
HIGHER_IS_BETTER = {"precision", "recall", "valid_word_rate"}


# --- images (features: float arrays (N, D)) ----------------------------------------------------------
def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^1/2) between Gaussians fitted to two feature sets."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Given(torch.nn.Module):  # the features are computed already: hand them through
        num_features = real.shape[1]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    fid = FrechetInceptionDistance(feature=Given(), reset_real_features=False)
    fid.update(torch.as_tensor(real, dtype=torch.float64), real=True)
    fid.update(torch.as_tensor(fake, dtype=torch.float64), real=False)
    return max(0.0, float(fid.compute()))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)), in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(d2, 0, None))


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour within the set (itself excluded)."""
    d = _distances(x, x)
    return np.sort(d, axis=1)[:, min(k, len(x) - 1)]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """k-NN manifold precision (share of samples inside the real data's manifold: quality) and recall
    (share of real data inside the samples' manifold: coverage). Each manifold is the union of balls
    reaching every point's k-th nearest neighbour."""
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = _distances(fake, real)  # (F, R)
    precision = float((d <= r_real[None, :]).any(1).mean())
    recall = float((d <= r_fake[:, None]).any(0).mean())
    return precision, recall


def diversity(features: np.ndarray) -> float:
    """Mean pairwise distance: 0 when every sample is the same."""
    n = len(features)
    if n < 2:
        return 0.0
    return float(_distances(features, features).sum() / (n * (n - 1)))


def nearest_distances(x: np.ndarray, reference: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Distance from each row of x to its nearest row of `reference` (flattened pixels)."""
    x, reference = x.reshape(len(x), -1), reference.reshape(len(reference), -1)
    return np.concatenate([_distances(x[i : i + chunk], reference).min(1) for i in range(0, len(x), chunk)])


def memorised_share(samples: np.ndarray, train: np.ndarray, threshold: float) -> float:
    """Share of samples whose nearest training image is closer than `threshold` (pixel space)."""
    return float((nearest_distances(samples, train) < threshold).mean())


def copy_threshold(test: np.ndarray, train: np.ndarray, quantile: float) -> float:
    """The distance below which a sample counts as a copy: the `quantile` of held-out test images'
    distances to their nearest training image. Real unseen data is 'memorised' at about that rate."""
    return float(np.quantile(nearest_distances(test, train), quantile))


# --- text --------------------------------------------------------------------------------------------
def ngrams(texts: list[str] | str, n: int) -> Counter:
    texts = [texts] if isinstance(texts, str) else texts
    return Counter(t[i : i + n] for t in texts for i in range(len(t) - n + 1))


def ngram_divergence(a: list[str] | str, b: list[str] | str, n: int = 3) -> float:
    """Jensen-Shannon divergence (bits, 0..1) between the character n-gram distributions of a and b:
    0 for the same distribution, 1 for disjoint ones."""
    ca, cb = ngrams(a, n), ngrams(b, n)
    ta, tb = sum(ca.values()), sum(cb.values())
    if not ta or not tb:
        return 1.0
    js = 0.0
    for g in ca.keys() | cb.keys():
        p, q = ca[g] / ta, cb[g] / tb
        m = (p + q) / 2
        js += (p * math.log2(p / m) if p else 0.0) + (q * math.log2(q / m) if q else 0.0)
    return max(0.0, min(1.0, js / 2))


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def valid_word_rate(texts: list[str] | str, vocabulary: set[str]) -> float:
    """Share of the words (letters only, 2+ long) in `texts` that occur in `vocabulary`."""
    texts = [texts] if isinstance(texts, str) else texts
    found = [w for t in texts for w in words(t)]
    return float(sum(w in vocabulary for w in found) / len(found)) if found else 0.0


def _squeeze(text: str) -> str:
    return " ".join(text.split())


class SpanIndex:
    """Every `span`-character substring of a corpus, to find verbatim copies in O(len(text)).

    Whitespace runs count as one space, and spans of fewer than `min_distinct` different characters
    (table rules, indentation, "-----") are not evidence of copying: any model writes those."""

    def __init__(self, corpus: str, span: int, min_distinct: int = 10) -> None:
        self.span, self.min_distinct = span, min_distinct
        corpus = _squeeze(corpus)
        self.seen = {corpus[i : i + span] for i in range(len(corpus) - span + 1)}

    def copies(self, text: str) -> bool:
        text = _squeeze(text)
        return any(
            len(set(piece)) >= self.min_distinct and piece in self.seen
            for piece in (text[i : i + self.span] for i in range(len(text) - self.span + 1))
        )


def copied_share(texts: list[str], index: SpanIndex) -> float:
    """Share of texts holding a verbatim span of at least `index.span` characters of the corpus."""
    return float(np.mean([index.copies(t) for t in texts])) if texts else 0.0
