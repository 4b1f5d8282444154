import json

import pytest

from tasks import collect
from tasks.core import paths
from tasks.core.errors import GenloopError
from tests.conftest import REPO


def test_sklearn_digits(project):
    result = collect.run(project.params())
    assert result["kind"] == "image" and result["files"] == 1797
    assert set(result["labels"]) == {str(d) for d in range(10)}
    manifest = json.loads(paths.MANIFEST.read_text())
    first = manifest["files"][0]
    assert set(first) == {"path", "sha256", "size", "source", "label"}
    assert first["source"].startswith("sklearn:digits#")
    assert (project.root / "data/raw" / first["path"]).stat().st_size == first["size"]


def test_the_digits_read_without_sklearn_are_sklearns():
    """tasks.ingest.digits reads the file scikit-learn ships; the same arrays as its load_digits, and
    scikit-learn itself stays unimported (what the reader is for)."""
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits as bundled

    from tasks.ingest.digits import load_digits

    images, labels = load_digits()
    theirs = bundled()
    assert images.shape == (1797, 8, 8) and images.dtype == theirs.images.dtype == np.float64
    assert labels.dtype == np.int64 and images.max() == 16.0
    assert np.array_equal(images, theirs.images) and np.array_equal(labels, theirs.target)
    code = (
        "import sys; from tasks.ingest import digits; digits.load_digits(); print('sklearn' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_collecting_twice_is_byte_identical(project):
    collect.run(project.params())
    before = project.snapshot()
    collect.run(project.params())
    collect.run(project.params())  # the first re-collect keeps data/.raw.previous; compare the raw tree
    after = project.snapshot()
    raw = {k: v for k, v in before.items() if k.startswith("raw/")}
    assert raw and raw == {k: v for k, v in after.items() if k.startswith("raw/")}


def test_pydoc_topics(project):
    project.set_params(data={"source": "pydoc:topics"}, model={"family": "gpt"})
    result = collect.run(project.params())
    assert result["kind"] == "text" and result["files"] > 50 and result["labels"] == {}
    assert result["bytes"] > 300_000


def test_local_folder_with_labels(project, digit_folder):
    (digit_folder / ".hidden.png").write_bytes(b"not collected")
    (digit_folder / "notes.md").write_text("ignored: not an image")
    project.set_params(data={"source": str(digit_folder)})
    result = collect.run(project.params())
    assert result["files"] == 75 and result["labels"] == {"a": 25, "b": 25, "c": 25}
    manifest = json.loads(paths.MANIFEST.read_text())
    assert all(f["source"].startswith(str(digit_folder)) for f in manifest["files"])


def test_local_text_folder(project, text_folder):
    project.set_params(data={"source": str(text_folder)}, model={"family": "gpt"})
    assert collect.run(project.params())["kind"] == "text"


@pytest.mark.parametrize("case", ["empty", "missing", "mixed"])
def test_bad_sources_leave_data_as_it_was(project, tmp_path, digit_folder, case):
    collect.run(project.params())
    before = project.snapshot()
    bad = tmp_path / "bad"
    if case != "missing":
        bad.mkdir()
    if case == "mixed":
        (bad / "a.txt").write_text("hello")
        (bad / "b.png").write_bytes((digit_folder / "a/000.png").read_bytes())
    project.set_params(data={"source": str(bad)})
    with pytest.raises(
        GenloopError, match={"empty": "no .png or .txt", "missing": "does not exist", "mixed": "mixes"}[case]
    ):
        collect.run(project.params())
    assert project.snapshot() == before
    assert not list((project.root / "data").glob(".raw.staging-*"))


@pytest.mark.parametrize(
    ("source", "family", "fits"), [("pydoc:topics", "vae", "gpt"), ("sklearn:digits", "gpt", "vae or gan")]
)
def test_a_family_that_cannot_model_the_source_stops_before_any_fetch(project, source, family, fits):
    project.set_params(data={"source": source}, model={"family": family})
    with pytest.raises(GenloopError) as err:
        collect.run(project.params())
    kind = "text" if source == "pydoc:topics" else "image"
    assert f"model.family {family} models" in str(err.value) and f"holds {kind}" in str(err.value)
    assert f"use model.family {fits}" in str(err.value)
    assert not (project.root / "data").exists()


def test_the_family_check_reads_a_folder_without_fetching_it(project, text_folder):
    project.set_params(data={"source": str(text_folder)}, model={"family": "vae"})  # images only
    with pytest.raises(GenloopError, match=f"data.source {text_folder} holds text: use model.family gpt"):
        collect.run(project.params())
    project.set_params(model={"family": "auto"})  # the default: the family of the data found
    assert project.params().model.family == "gpt"
