import json

import numpy as np
import pytest

from tasks import augment, collect, validate
from tasks.core import paths
from tasks.core.errors import GenloopError
from tests.conftest import write_png


def use_folder(project, folder, **validate_params):
    image = {"labels": ["a", "b", "c"], "min_per_class": 20} | validate_params
    project.set_params(data={"source": str(folder)}, validate={"image": image})


def collect_and_validate(project):
    collect.run(project.params())
    return validate.run(project.params())


def test_digits_pass(project):
    summary = collect_and_validate(project)
    assert summary["success"] and summary["failures"] == []
    assert (project.root / summary["data_docs"]).is_file()


def test_text_passes(project, text_folder):
    project.set_params(data={"source": str(text_folder)}, model={"family": "gpt"})
    assert collect_and_validate(project)["success"]


def failing(project) -> tuple[str, dict]:
    with pytest.raises(GenloopError) as err:
        collect_and_validate(project)
    summary = json.loads(paths.VALIDATION_SUMMARY.read_text())
    assert not summary["success"]
    assert (project.root / "artifacts/validate/data_docs/index.html").is_file()
    return str(err.value), summary


def failed(summary: dict) -> dict[str, list[str]]:
    return {f"{f['expectation']}:{f['column']}": f["files"] for f in summary["failures"]}


def test_truncated_png_is_named(project, digit_folder):
    victim = digit_folder / "b/007.png"
    victim.write_bytes(victim.read_bytes()[:40])
    use_folder(project, digit_folder)
    message, summary = failing(project)
    assert failed(summary)["expect_column_values_to_be_in_set:decodable"] == ["files/b/007.png"]
    assert "1 file(s) do not decode as images: files/b/007.png" in message
    assert "data/raw is empty: no batch of this source has passed yet" in message  # the first batch


def test_wrong_shape_and_mode(project, digit_folder):
    write_png(digit_folder / "a/100.png", np.zeros((9, 8), np.uint8))
    write_png(digit_folder / "c/100.png", np.zeros((8, 8, 3), np.uint8))
    use_folder(project, digit_folder)
    _, summary = failing(project)
    got = failed(summary)
    assert got["expect_column_values_to_be_between:height"] == ["files/a/100.png"]
    assert got["expect_column_values_to_be_between:channels"] == ["files/c/100.png"]


def test_undeclared_label_and_small_class(project, digit_folder):
    write_png(digit_folder / "zebra/1.png", np.full((8, 8), 7, np.uint8))
    use_folder(project, digit_folder, labels=["a", "b", "c", "d"])
    _, summary = failing(project)
    got = failed(summary)
    assert got["expect_column_values_to_be_in_set:label"] == ["files/zebra/1.png"]
    assert sorted(got["expect_column_values_to_be_between:count"]) == ["class d", "class zebra"]


def test_duplicate_rate(project, digit_folder):
    for i in range(10):  # 10 exact copies in 85 files: 11.8% duplicates > 5%
        (digit_folder / "a" / f"dup{i}.png").write_bytes((digit_folder / "a/000.png").read_bytes())
    use_folder(project, digit_folder)
    _, summary = failing(project)
    assert "expect_column_proportion_of_unique_values_to_be_between:digest" in failed(summary)


def test_invalid_utf8_and_pii(project, text_folder):
    (text_folder / "broken.txt").write_bytes(b"valid start \xff\xfe then junk")
    (text_folder / "leak.txt").write_text("contact me at jane.doe@example.com, key AKIAABCDEFGHIJKLMNOP")
    project.set_params(data={"source": str(text_folder)}, model={"family": "gpt"})
    message, summary = failing(project)
    got = failed(summary)
    assert got["expect_column_values_to_be_in_set:utf8_valid"] == ["files/broken.txt"]
    assert got["expect_column_values_to_be_between:pii_hits"] == ["files/leak.txt"]
    assert got["expect_column_values_to_be_between:secret_hits"] == ["files/leak.txt"]  # the AWS key
    assert "files/leak.txt" in message


# Each kind a hand-written gate missed; the values are made up, in each kind's real format.
SECRETS = {
    "env.txt": "run it with\nexport GENLOOP_API_KEY=sk-test-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c\n",
    "aws.txt": "[default]\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzEXAMPLEKEY\n",
    "stripe.txt": "charge with sk_live_4eC39HqLyjWDarjtT1zdp7dc today\n",
    "github.txt": "token: github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP\n",
    "jwt.txt": "session eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4"
    "gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c\n",
    "pem.txt": "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2\n"
    "-----END RSA PRIVATE KEY-----\n",
    "google.txt": "maps key AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY\n",
    "password.txt": "db settings\npassword=hunter2correcthorse\n",
    "bearer.txt": "curl -H 'Authorization: Bearer abcdef0123456789abcdef0123456789'\n",
}


def test_secrets_stop_the_batch_named_by_file_line_and_kind_never_shown(project, text_folder):
    for name, text in SECRETS.items():
        (text_folder / name).write_text(text)
    project.set_params(data={"source": str(text_folder)}, model={"family": "gpt"})
    message, summary = failing(project)
    assert sorted(failed(summary)["expect_column_values_to_be_between:secret_hits"]) == sorted(
        f"files/{name}" for name in SECRETS
    )
    assert "files/aws.txt: line 2 (Secret Keyword)" in message
    assert "files/bearer.txt: line 1 (Bearer Token)" in message
    values = ["4f9a8b7c6d5e", "wJalrXUtnFEMI", "4eC39HqLyjWDarjtT1zdp7dc", "github_pat_11ABCDEFG",
              "SflKxwRJSM", "MIIEpAIBAAKCAQEA", "AIzaSyD-9tSrke72", "hunter2correcthorse",
              "abcdef0123456789abcdef"]  # fmt: skip
    published = [project.root / "artifacts", project.root / "data"]
    for folder in published:  # summary, data docs, a rejected batch: none repeats a secret
        for f in (p for p in folder.rglob("*") if p.is_file()):
            content = f.read_bytes()
            assert not [v for v in values if v.encode() in content], f
    assert not any(v in message for v in values)
    quarantined = project.root / ".genloop/quarantine"
    assert summary["rejected"] == ".genloop/quarantine"
    assert (quarantined / "files/aws.txt").stat().st_mode & 0o777 == 0o600
    assert all(p.stat().st_mode & 0o077 == 0 for p in [quarantined, *quarantined.rglob("*")])
    assert not (project.root / "artifacts/validate/rejected").exists()


def test_small_corpus_and_charset(project, tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "a.txt").write_text("ünïcödé " * 20)
    project.set_params(
        data={"source": str(folder)},
        model={"family": "gpt"},
        validate={"text": {"charset": "printable-ascii"}},
    )
    _, summary = failing(project)
    got = failed(summary)
    assert "expect_column_sum_to_be_between:n_chars" in got
    assert got["expect_column_values_to_be_between:charset_coverage"] == ["files/a.txt"]


def test_pii_threshold_allows_some_files(project, text_folder):
    (text_folder / "leak.txt").write_text("write to jane.doe@example.com " * 500)
    project.set_params(
        data={"source": str(text_folder)},
        model={"family": "gpt"},
        validate={"text": {"max_pii_file_rate": 0.1}},
    )
    assert collect_and_validate(project)["success"]


def test_failed_batch_is_rejected_and_previous_restored(project, digit_folder):
    use_folder(project, digit_folder)
    collect_and_validate(project)
    augment.run(project.params())
    before = project.snapshot()
    victim = digit_folder / "a/003.png"
    victim.write_bytes(victim.read_bytes()[:30])
    message, _ = failing(project)
    assert project.snapshot() == before  # data/ exactly as it was, data/raw included
    assert "data/raw holds the last validated batch again" in message
    assert (paths.REJECTED / "files/a/003.png").is_file()
    with pytest.raises(GenloopError, match="failed validation"):
        augment.run(project.params())
    assert project.snapshot() == before


def test_augment_refuses_data_changed_after_validation(project, digit_folder):
    collect_and_validate(project)
    collect.run(
        project.params().model_copy(
            update={"data": project.params().data.model_copy(update={"source": str(digit_folder)})}
        )
    )
    with pytest.raises(GenloopError, match="changed since it was validated"):
        augment.run(project.params())


# --- any folder by changing data.source alone: the schema is the dataset's reference ----------------------
def test_a_folder_of_16x16_shapes_passes_with_nothing_but_its_source(project, shapes_folder):
    project.set_params(data={"source": str(shapes_folder)})
    summary = collect_and_validate(project)
    assert summary["success"]
    expected = summary["expected"]
    assert expected["height"] == 16 and expected["labels"] == ["circle", "square", "triangle"]
    ref = json.loads((project.root / summary["reference"]).read_text())
    assert ref["shape"] == [1, 16, 16] and ref["labels"] == ["circle", "square", "triangle"]
    assert augment.run(project.params())["shape"] == [1, 16, 16]


def test_a_later_batch_with_a_new_class_fails_naming_the_param(project, shapes_folder):
    from tests.conftest import draw_shapes

    project.set_params(data={"source": str(shapes_folder)})
    collect_and_validate(project)
    draw_shapes(shapes_folder, 25, seed=1, classes=("star",))
    message, _ = failing(project)
    assert "labels: expected circle, square, triangle (the dataset's reference" in message
    assert "found new label(s) star in 25 file(s), e.g. files/star/000.png, files/star/001.png" in message
    assert "set validate.image.labels: [star, circle, square, triangle]" in message
    assert (project.root / "artifacts/validate/rejected/files/star/000.png").is_file()
    # the user accepts the new class explicitly: that wins over the reference
    project.set_params(validate={"image": {"labels": ["circle", "square", "star", "triangle"]}})
    assert collect_and_validate(project)["success"]


def test_a_later_batch_with_another_size_fails_naming_the_param(project, shapes_folder):
    project.set_params(data={"source": str(shapes_folder)})
    collect_and_validate(project)
    write_png(shapes_folder / "circle/big.png", np.zeros((20, 20), np.uint8))
    message, _ = failing(project)
    assert (
        "height: expected 16 px (the dataset's reference, recorded from its first batch that passed)"
        in message
    )
    assert (
        "found 20 (1 file), e.g. files/circle/big.png; to expect 20 instead, set validate.image.height: 20"
        in message
    )


def test_the_first_batch_is_held_to_its_own_majority(project, shapes_folder):
    write_png(shapes_folder / "square/odd.png", np.zeros((16, 12, 3), np.uint8))
    project.set_params(data={"source": str(shapes_folder)})
    message, _ = failing(project)
    assert "width: expected 16 px (most of this batch, the dataset's first); found 12 (1 file)" in message
    assert "channels: expected 1 (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA) (most of this batch" in message
    assert not (project.root / "artifacts/validate/reference").exists()  # nothing recorded from a failure


def test_explicit_values_still_win(project, shapes_folder):
    project.set_params(data={"source": str(shapes_folder)}, validate={"image": {"height": 8, "width": 8}})
    message, _ = failing(project)
    assert "height: expected 8 px (validate.image.height in params.yaml); found 16 (90 files)" in message


def test_a_text_folder_keeps_its_characters(project, text_folder):
    project.set_params(data={"source": str(text_folder)}, model={"family": "gpt"})
    summary = collect_and_validate(project)
    assert summary["success"] and summary["expected"]["charset"] == "printable characters"
    (text_folder / "greek.txt").write_text("Καλημέρα κόσμε, τι κάνεις; " * 100)
    message, _ = failing(project)
    assert "characters: expected at least 99% of each file's characters among the dataset's" in message
    assert "files/greek.txt" in message and "set validate.text.charset: any" in message
    project.set_params(validate={"text": {"charset": "any"}})
    assert collect_and_validate(project)["success"]


def test_an_unlabelled_folder_passes_and_a_mixed_one_says_what_to_move(project, tmp_path):
    rng = np.random.default_rng(0)
    flat = tmp_path / "flat"
    for i in range(40):
        write_png(flat / f"{i:03d}.png", rng.integers(0, 256, (12, 12), dtype=np.uint8))
    project.set_params(data={"source": str(flat)})
    summary = collect_and_validate(project)  # no class folders: an unlabelled dataset, no classes to count
    assert summary["success"] and summary["expected"]["labels"] == []
    assert augment.run(project.params())["classes"] == []

    mixed = tmp_path / "mixed"
    for i in range(25):
        write_png(mixed / "cat" / f"{i:03d}.png", rng.integers(0, 256, (12, 12), dtype=np.uint8))
    write_png(mixed / "stray.png", rng.integers(0, 256, (12, 12), dtype=np.uint8))
    project.set_params(data={"source": str(mixed)})
    message, _ = failing(project)
    assert "1 file(s) sit outside any class folder, e.g. files/stray.png: move them into one" in message


def test_palette_and_one_bit_pngs_are_read_as_their_pixels(project, tmp_path):
    from PIL import Image

    folder = tmp_path / "palette"
    rng = np.random.default_rng(1)
    for label in ("a", "b"):
        for i in range(25):
            rgb = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            (folder / label).mkdir(parents=True, exist_ok=True)
            rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / label / f"{i}.png")
    project.set_params(data={"source": str(folder)})
    summary = collect_and_validate(project)
    assert summary["expected"]["channels"] == 3  # the palette's colours, not its indices
    augment.run(project.params())
    assert np.load(project.root / "data/processed/train_x.npy").shape[1:] == (3, 8, 8)
