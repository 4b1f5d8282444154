"""End to end through the real CLI: `dvc repro` calling `genloop stage ...`."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import SMALL_BASELINE, undeclared_params

pytestmark = pytest.mark.slow


QUICK_TRAIN = {"max_steps": 5, "steps_per_epoch": 5, "val_batches": 1, "sample_every_n_epochs": 0}


def ran(proc) -> set[str]:
    out = proc.stdout + proc.stderr
    return {
        s
        for s in ("collect", "validate", "augment", "tune", "train", "evaluate")
        if f"Running stage '{s}'" in out
    }


def test_repro_from_scratch_then_noop_then_only_what_changed(project, tmp_path):
    fresh = project.run("genloop", "deploy")  # a fresh clone: deploy says what to run first
    assert fresh.returncode == 1 and "nothing is packaged yet: run `dvc repro`" in fresh.stderr
    project.set_params(train=QUICK_TRAIN, evaluate=SMALL_BASELINE)
    log = tmp_path / "params-read.jsonl"
    first = project.run("dvc", "repro", check=True, env={"GENLOOP_PARAMS_LOG": str(log)})
    assert ran(first) == {"collect", "validate", "augment", "tune", "train", "evaluate"}
    # every stage lists in dvc.yaml each param it read (what it records in lineage included)
    assert len(log.read_text().splitlines()) == 8 and undeclared_params(log) == {}  # feedback .. package
    assert (project.root / "dvc.lock").is_file()
    lock = (project.root / "dvc.lock").read_text()
    # a model this brief loses to the baseline: rejected, so there is no champion to package or deploy
    decision = json.loads((project.root / "artifacts/evaluate/decision.json").read_text())
    assert decision["decision"] == "reject"
    packaged = json.loads((project.root / "artifacts/package/bento.json").read_text())
    assert packaged["bento"] is None and "no champion yet" in packaged["reason"]
    refused = project.run("genloop", "deploy")
    assert refused.returncode == 1 and "nothing to deploy" in refused.stderr

    again = project.run("dvc", "repro", check=True)
    assert ran(again) == set() and "up to date" in again.stdout
    assert (project.root / "dvc.lock").read_text() == lock

    project.set_params(augment={"seed": 7})
    changed = project.run("dvc", "repro", check=True)
    # new data: retrain (tune is off: it runs no trials); collect and validate untouched
    assert ran(changed) == {"augment", "tune", "train", "evaluate"}

    project.set_params(train={"lr": 0.001})
    assert ran(project.run("dvc", "repro", check=True)) == {"tune", "train", "evaluate"}

    project.set_params(validate={"image": {"min_per_class": 10}})
    assert ran(project.run("dvc", "repro", check=True)) == {"validate"}  # same summary: augment skipped

    forced = project.run("dvc", "repro", "--force", "collect", check=True)
    assert ran(forced) == {"collect"}  # byte-identical output: nothing downstream reruns
    assert ran(project.run("dvc", "repro", check=True)) == set()


def test_bad_batch_stops_the_pipeline_and_keeps_data(project, digit_folder, tmp_path):
    project.set_params(
        data={"source": str(digit_folder)},
        validate={"image": {"labels": ["a", "b", "c"], "min_per_class": 20}},
        train=QUICK_TRAIN,  # a model, however brief: what the bad batch must leave alone
        evaluate=SMALL_BASELINE,
    )
    project.run("dvc", "repro", check=True)
    before, model_before = project.snapshot(), project.snapshot("artifacts/train/model")
    assert model_before

    bad = tmp_path / "bad-batch"
    shutil.copytree(digit_folder, bad)
    png = bad / "c/011.png"
    png.write_bytes(png.read_bytes()[:25])
    project.set_params(data={"source": str(bad)})
    proc = project.run("dvc", "repro")
    assert proc.returncode != 0
    assert ran(proc) == {"collect", "validate"}  # neither augment nor train: no model is written
    assert "1 file(s) do not decode as images: files/c/011.png" in proc.stderr
    assert "WARNING" not in proc.stderr  # nothing DVC would warn about (an empty dependency, say)
    assert "Traceback" not in proc.stderr
    assert project.snapshot() == before
    assert project.snapshot("artifacts/train/model") == model_before
    assert (project.root / "artifacts/validate/data_docs/index.html").is_file()
    assert (project.root / "artifacts/validate/rejected/files/c/011.png").is_file()

    project.set_params(data={"source": str(digit_folder)})  # back to the good source: recovers
    project.run("dvc", "repro", check=True)
    assert project.snapshot() == before


def test_no_stage_writes_a_tracked_file(project):
    """A GPT run (no sample images for dvclive to plot) leaves git clean: dvc.yaml is ours alone, and
    the model's lineage says the tree was clean when it was trained."""
    import subprocess

    tiny = {"block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32, "train": None}  # QUICK_TRAIN holds
    project.set_params(
        data={"source": "pydoc:topics"}, model={"family": "gpt", "gpt": tiny}, train=QUICK_TRAIN
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "commit", "-qam", "a GPT"], cwd=project.root, check=True)
    project.run("dvc", "repro", "train", check=True)
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project.root,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert changed == ""
    record = json.loads((project.root / "artifacts/train/model/training.json").read_text())
    assert record["git"]["dirty"] is False and record["params"]["model"]["family"] == "gpt"


def test_a_folder_of_ones_own_runs_with_only_its_source_changed(project, shapes_folder):
    """16x16 PNGs in three class folders: nothing in params.yaml but data.source changes, and the whole
    pipeline runs (the gate's expectations come from the folder's first batch)."""
    project.set_params(data={"source": str(shapes_folder)})
    project.set_params(train=QUICK_TRAIN)  # only to keep the test short
    project.run("dvc", "repro", "evaluate", check=True)
    meta = json.loads((project.root / "data/processed/meta.json").read_text())
    assert meta["shape"] == [1, 16, 16] and meta["classes"] == ["circle", "square", "triangle"]
    metrics = json.loads((project.root / "artifacts/evaluate/metrics.json").read_text())
    assert {"nll_bits_per_dim", "fd", "precision", "recall"} <= set(metrics["model"])
    assert metrics["featurizer"]["kind"] == "classifier"  # it learned the three shapes' classes
    card = (project.root / "artifacts/evaluate/card.md").read_text()
    assert str(shapes_folder) in card and "pictures/samples.png" in card
