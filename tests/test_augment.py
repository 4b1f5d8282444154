import json

import numpy as np
import pytest

from tasks import augment, collect, validate
from tasks.augment import split_indices
from tasks.core import paths


def prepare(project, **augment_params):
    if augment_params:
        project.set_params(augment=augment_params)
    collect.run(project.params())
    validate.run(project.params())
    return augment.run(project.params())


def load(split):
    return np.load(paths.PROCESSED / f"{split}_x.npy"), np.load(paths.PROCESSED / f"{split}_y.npy")


def test_split_is_seeded_stratified_and_disjoint():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    parts = split_indices(labels, 0.1, 0.2, seed=7)
    assert parts == split_indices(labels, 0.1, 0.2, seed=7)
    assert parts != split_indices(labels, 0.1, 0.2, seed=8)
    every = sorted(parts["train"] + parts["val"] + parts["test"])
    assert every == list(range(100))
    for label, n in {"a": 50, "b": 30, "c": 20}.items():
        assert sum(labels[i] == label for i in parts["test"]) == round(n * 0.2)
        assert sum(labels[i] == label for i in parts["val"]) == round(n * 0.1)


def test_images_augmented_on_train_only(project):
    meta = prepare(project, image={"factor": 2})
    assert meta["kind"] == "image" and meta["shape"] == [1, 8, 8] and len(meta["classes"]) == 10
    x_train, y_train = load("train")
    n = meta["originals"]["train"]
    assert len(x_train) == 3 * n and x_train.dtype == np.uint8
    assert (y_train[n : 2 * n] == y_train[:n]).all()
    assert not (x_train[n : 2 * n] == x_train[:n]).all()  # the copies differ from the originals
    # val/test are untouched originals: every one of them is a raw image, byte for byte
    raw = {f["path"]: f for f in json.loads(paths.MANIFEST.read_text())["files"]}
    from PIL import Image

    originals = {np.asarray(Image.open(paths.RAW / p)).tobytes() for p in raw}
    for split in ("val", "test"):
        x, _ = load(split)
        assert len(x) == meta["counts"][split]
        assert all(img[0].tobytes() in originals for img in x)
    assert (paths.PROCESSED / "preview.png").is_file()


def test_rerun_is_byte_identical(project):
    prepare(project)
    before = project.snapshot("data/processed")
    augment.run(project.params())
    assert project.snapshot("data/processed") == before


def test_factor_zero_means_no_copies(project):
    meta = prepare(project, image={"factor": 0})
    assert meta["counts"]["train"] == meta["originals"]["train"]
    assert (paths.PROCESSED / "preview.png").is_file()  # the classes are still shown


def test_text_split_is_contiguous(project):
    project.set_params(data={"source": "pydoc:topics"}, model={"family": "gpt"})
    meta = prepare(project)
    vocab = meta["vocab"]
    parts = [np.load(paths.PROCESSED / f"{s}.npy") for s in ("train", "val", "test")]
    text = "".join(vocab[i] for i in np.concatenate(parts))
    corpus = "\n".join(
        (paths.RAW / f["path"]).read_text() for f in json.loads(paths.MANIFEST.read_text())["files"]
    )
    assert text == corpus
    assert len(parts[2]) == pytest.approx(0.1 * len(corpus), abs=1)
