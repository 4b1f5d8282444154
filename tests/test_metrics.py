"""Each evaluation metric and baseline on cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.quality import baselines, metrics

RNG = np.random.default_rng(0)


def test_frechet_distance_is_zero_for_the_same_set_and_grows_with_a_shift() -> None:
    a = RNG.normal(size=(500, 4))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # same covariance, mean moved by 3 in each of 4 dimensions: ||mu1 - mu2||^2 = 36
    assert metrics.frechet_distance(a, a + 3.0) == pytest.approx(36.0, rel=1e-6)


def test_precision_recall_identical_disjoint_and_collapsed_sets() -> None:
    real = RNG.normal(size=(200, 3))
    assert metrics.precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    assert metrics.precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
    # a mode-collapsed generator: every sample near one real point -> precise, but covers little
    collapsed = real[:1] + RNG.normal(scale=1e-3, size=(200, 3))
    precision, recall = metrics.precision_recall(real, collapsed, k=3)
    assert precision == 1.0 and recall < 0.1


def test_diversity_is_zero_for_copies_of_one_sample() -> None:
    assert metrics.diversity(np.ones((10, 5))) == 0.0
    assert metrics.diversity(np.array([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)


def test_memorisation_counts_copies_of_training_images() -> None:
    train = RNG.random((300, 1, 8, 8))
    test = RNG.random((100, 1, 8, 8))
    threshold = metrics.copy_threshold(test, train, 0.1)
    assert metrics.memorised_share(train[:50], train, threshold) == 1.0
    assert metrics.memorised_share(test, train, threshold) == pytest.approx(0.1, abs=0.02)
    assert metrics.memorised_share(RNG.random((100, 1, 8, 8)) + 5, train, threshold) == 0.0


def test_ngram_divergence_bounds() -> None:
    assert metrics.ngram_divergence("abcabcabc", "abcabcabc", 2) == pytest.approx(0.0)
    assert metrics.ngram_divergence("aaaaaa", "bbbbbb", 2) == pytest.approx(1.0)
    assert 0 < metrics.ngram_divergence("the cat sat", "the dog sat", 2) < 1


def test_valid_word_rate() -> None:
    vocabulary = {"the", "cat", "sat"}
    assert metrics.valid_word_rate(["The cat sat"], vocabulary) == 1.0
    assert metrics.valid_word_rate(["the zxq sat qqz"], vocabulary) == 0.5
    assert metrics.valid_word_rate(["12 34 !"], vocabulary) == 0.0


def test_verbatim_copies_are_found_and_boilerplate_is_not() -> None:
    corpus = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. " + " " * 80
    index = metrics.SpanIndex(corpus, span=40)
    assert index.copies("xx" + corpus[10:60] + "yy")
    assert not index.copies("Lorem ipsum dolor sit amet, but then something else entirely")
    assert not index.copies(" " * 100)  # whitespace is not a copy
    assert metrics.copied_share([corpus[:50], "nothing like it at all, not one bit of it here"], index) == 0.5


def test_char_ngram_is_a_distribution_and_learns_structure() -> None:
    text = "abcabcabcabcabcabcabcabc"
    vocab = [*sorted(set(text)), "z"]
    model = baselines.CharNGram(3, vocab).fit(text)
    for history in ("", "a", "ab", "zz"):
        assert sum(model.prob(history, c) for c in vocab) == pytest.approx(1.0)
    assert model.bits_per_char("abcabc") < 1.0  # predictable after training on it
    uniform = baselines.CharNGram(1, vocab).fit("abcz")  # unigram of a uniform text: log2(4) bits
    assert uniform.bits_per_char("abcz") == pytest.approx(math.log2(4), abs=0.2)


def test_gaussian_mixture_baseline_scores_and_samples() -> None:
    train = RNG.integers(0, 256, (200, 1, 4, 4), dtype=np.uint8)
    gmm = baselines.GaussianMixtureBaseline(2, seed=0).fit(train)
    bpd = gmm.bits_per_dim(train[:50])
    assert 0 < bpd <= 8.5  # near 8 bits for uniform noise
    samples = gmm.sample(10)
    assert samples.shape == (10, 1, 4, 4) and samples.min() >= 0 and samples.max() <= 1
