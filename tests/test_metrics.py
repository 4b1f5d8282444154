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
    gmm = baselines.GaussianMixtureBaseline(2, 1e-6, seed=0).fit(train)
    bpd = gmm.bits_per_dim(train[:50])
    assert 0 < bpd <= 8.5  # near 8 bits for uniform noise
    samples = gmm.sample(10)
    assert samples.shape == (10, 1, 4, 4) and samples.min() >= 0 and samples.max() <= 1


def test_any_slice_of_the_mixtures_samples_is_a_fair_draw() -> None:
    """Sample metrics judge draws of the test split's size one after another: the mixture's samples
    must not come grouped by component (sklearn draws them so), or a draw would see few of them."""
    dark, light = np.full((100, 1, 2, 2), 20, np.uint8), np.full((100, 1, 2, 2), 230, np.uint8)
    train = np.concatenate([dark, light]) + RNG.integers(0, 10, (200, 1, 2, 2), dtype=np.uint8)
    gmm = baselines.GaussianMixtureBaseline(2, 1e-4, seed=0).fit(train)
    first_half = gmm.sample(200)[:100].mean(axis=(1, 2, 3))
    assert 20 < (first_half > 0.5).sum() < 80  # both components, about half each


def test_char_ngram_order_is_chosen_on_validation_and_it_writes_text() -> None:
    from pydoc_data.topics import topics

    corpus = "\n".join(topics[k] for k in sorted(topics))[:120_000]
    vocab = sorted(set(corpus))
    model, tried = baselines.fit_char_ngram(corpus[:100_000], corpus[100_000:110_000], vocab, 9)
    assert set(tried) == set(range(1, 10)) and tried[model.order] == min(tried.values())
    assert 2 < model.order < 9  # a bigram knows too little, a 9-gram is too sparse on 100 kB
    assert model.distribution("the").sum() == pytest.approx(1.0)
    texts = model.sample(2, 200, seed=0)
    assert len(texts) == 2 and all(len(t) == 200 and set(t) <= set(vocab) for t in texts)
    assert texts == model.sample(2, 200, seed=0) and texts != model.sample(2, 200, seed=1)


def _images(kind: str) -> np.ndarray:
    """(N, 1, H, W) uint8: sklearn's 8x8 digits, 16x16 shapes like a user's folder, 28x28 strokes."""
    rng = np.random.default_rng(0)
    if kind == "digits":
        from sklearn.datasets import load_digits

        return np.rint(load_digits().images * 255 / 16).astype(np.uint8)[:, None]
    size, n = (16, 300) if kind == "shapes" else (28, 300)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        r = rng.uniform(size * 0.15, size * 0.3)
        if kind == "shapes":
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:  # a stroke: a thick line at a random angle
            a = rng.uniform(0, np.pi)
            mask = np.abs((yy - cy) * np.cos(a) - (xx - cx) * np.sin(a)) <= 1.5
        out[i, 0] = np.clip(mask * rng.uniform(160, 255) + rng.normal(0, 8, mask.shape), 0, 255)
    return out


@pytest.mark.parametrize("kind", ["digits", "shapes", "strokes"])
def test_image_baselines_are_finite_and_sane(kind) -> None:
    """The mixture's capacity and regularisation are chosen on held-out images; a fit worse than
    independent Gaussian pixels would be flagged degenerate, and the per-pixel figure is always a sane
    bar."""
    x = _images(kind)
    train, val, test = (
        x[: int(len(x) * 0.8)],
        x[int(len(x) * 0.8) : int(len(x) * 0.9)],
        x[int(len(x) * 0.9) :],
    )
    gmm, tried = baselines.fit_gaussian_mixture(train, val, [1, 4, 16], [1e-6, 1e-4, 1e-2], seed=0)
    pixels = baselines.fit_independent_pixels(train, val, [1e-6, 1e-4, 1e-2], seed=0)
    g, p = gmm.bits_per_dim(test), pixels.bits_per_dim(test)
    assert np.isfinite(g) and 0 < p < 8.5  # both finite; independent pixels near a uniform guess at worst
    assert min(v for v in tried.values() if v is not None) == pytest.approx(gmm.bits_per_dim(val), abs=1e-4)
    assert g < p  # chosen on held-out images, the mixture is a real baseline: better than independent pixels
    assert gmm.covariance == ("diag" if kind == "strokes" else "full")


def test_image_sample_metrics_are_the_mean_over_draws_of_the_test_size(tmp_path) -> None:
    """Samples are judged a test split's worth at a time, so a figure is measured at real data's sample
    size, and the draws' figures are averaged: one draw's FD moves with the seed alone."""
    from tasks.core.params import load
    from tasks.quality.measure import Measure, Split
    from tests.conftest import REPO

    x = _images("shapes")
    y = np.zeros(len(x), np.int64)  # one class: the features are the pixels, no featurizer to train
    split = Split(
        {"kind": "image"},
        {"train": (x[:200], y[:200]), "val": (x[200:250], y[200:250]), "test": (x[250:], y[250:])},
    )
    measure = Measure(split, load(REPO / "params.yaml").evaluate, tmp_path)
    rng = np.random.default_rng(1)
    draws = [
        np.clip(x[rng.choice(200, 50)] / 255 + rng.normal(0, s, (50, 1, 16, 16)), 0, 1) for s in (0.05, 0.2)
    ]
    one, two = measure.samples(draws[0]), measure.samples(draws[1])
    both = measure.samples(np.concatenate(draws))
    assert one["fd"] != pytest.approx(two["fd"], rel=0.1)  # the draws differ, so averaging matters
    for key in ("fd", "precision", "recall", "diversity", "memorised"):
        assert both[key] == pytest.approx((one[key] + two[key]) / 2)


def test_the_featurizer_is_a_sharp_eye_even_on_a_small_training_split(tmp_path, monkeypatch) -> None:
    """The feature space of FD, precision and recall is a classifier trained for a number of steps, not
    epochs: on 500 digits (4 batches a pass) it still learns to tell them apart. With GENLOOP_CACHE_DIR,
    another project on the same training set reuses it instead of training it again."""
    from sklearn.datasets import load_digits

    from tasks.quality import featurizer

    monkeypatch.setenv("GENLOOP_CACHE_DIR", str(tmp_path / "cache"))
    order = np.random.default_rng(0).permutation(1797)
    x, y = _images("digits")[order], load_digits().target.astype(np.int64)[order]
    train, test = (x[:500], y[:500]), (x[1000:1400], y[1000:1400])
    features, info = featurizer.ensure(tmp_path / "one", train, test, seed=0)
    assert info["kind"] == "classifier" and info["test_accuracy"] >= 0.95  # 15 epochs of 4 batches: 0.84
    assert features(x[:10] / 255.0).shape == (10, 64)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(featurizer, "_train", no_training)
    again, same = featurizer.ensure(tmp_path / "two", train, test, seed=0)
    assert same == info and np.array_equal(again(x[:10] / 255.0), features(x[:10] / 255.0))
    assert list((tmp_path / "cache/featurizer").iterdir()) == [
        tmp_path / "cache/featurizer" / info["fingerprint"]
    ]
    with pytest.raises(AssertionError, match="trained again"):  # another training set: its own eye
        featurizer.ensure(tmp_path / "three", (x[:400], y[:400]), test, seed=0)
