"""End to end through the real CLI: `dvc repro` calling `genloop stage ...`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMALL_BASELINE, undeclared_params

pytestmark = pytest.mark.slow


CHROMIUM = Path("/usr/bin/chromium")
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


COLOUR_PAGE_PIXELS = """img => { const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data; const sum = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) { if (d[i] + d[i + 1] + d[i + 2] > 240) {
    sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2]; } }
  return sum; }"""


def _bright_rgb(pixels) -> list[float]:
    """The summed R, G, B of an (H, W, 3) picture's bright pixels (the shape, not the background)."""
    import numpy as np

    px = np.asarray(pixels, dtype=np.float64)
    bright = px[px.sum(-1) > 240]
    return bright.sum(0).tolist()


def test_a_colour_folder_of_ones_own_runs_with_only_its_source_changed(project, tmp_path):
    """16x16 RGB PNGs in three class folders (red circles, green squares, blue triangles): nothing in
    params.yaml but data.source changes (and, to keep the test short, the budget), and colour survives
    every stage: the featurizer sees three channels, the model (the GAN, at 16x16) and its sizes are
    chosen for the data, the card's pictures, the service's answers and the web page show each class
    in its colour."""
    import base64
    import io

    import httpx
    from PIL import Image

    from tests.conftest import draw_colour_shapes, serving

    folder = draw_colour_shapes(tmp_path / "colour", 30)
    project.set_params(data={"source": str(folder)})
    project.set_params(train={"max_steps": 300, "steps_per_epoch": 50, "val_batches": 1})  # short
    project.run("dvc", "repro", "evaluate", check=True)
    meta = json.loads((project.root / "data/processed/meta.json").read_text())
    assert meta["shape"] == [3, 16, 16] and meta["classes"] == ["circle", "square", "triangle"]
    metrics = json.loads((project.root / "artifacts/evaluate/metrics.json").read_text())
    assert {"fd", "precision", "recall"} <= set(metrics["model"])
    eye = json.loads((project.root / "artifacts/evaluate/featurizer/featurizer.json").read_text())
    assert eye["kind"] == "classifier" and eye["config"]["channels"] == 3  # it sees colour
    record = json.loads((project.root / "artifacts/train/model/training.json").read_text())
    assert record["auto"] == {"model.family": "gan", "model.gan.stages": 2}
    card = (project.root / "artifacts/evaluate/card.md").read_text()
    assert str(folder) in card and "pictures/samples.png" in card
    assert "Chosen for this data (`auto` in params.yaml):" in card and "- `model.gan.stages`: 2" in card
    samples = Image.open(project.root / "artifacts/evaluate/pictures/samples.png")
    assert samples.mode == "RGB"
    grid = np.asarray(samples)
    third = grid.shape[1] // 3  # one column per class: circle, square, triangle
    red, _, blue = _bright_rgb(grid[20:, :third])
    assert red > 1.5 * blue, (red, blue)
    red, _, blue = _bright_rgb(grid[20:, 2 * third :])
    assert blue > 1.5 * red, (red, blue)

    # the service answers colour PNGs, and the page shows them in colour
    decision = json.loads((project.root / "artifacts/evaluate/decision.json").read_text())
    with serving(project, decision["challenger"]) as url:
        answer = httpx.post(url + "/generate", json={"n": 4, "label": "circle", "seed": 1}, timeout=60)
        assert answer.status_code == 200, answer.text
        pictures = [Image.open(io.BytesIO(base64.b64decode(s["image"]))) for s in answer.json()["samples"]]
        assert {p.mode for p in pictures} == {"RGB"}
        red, _, blue = np.sum([_bright_rgb(p) for p in pictures], 0)
        assert red > 1.5 * blue, (red, blue)
        if CHROMIUM.exists():
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
                try:
                    page = browser.new_page()
                    page.goto(url + "/ui")
                    page.wait_for_selector("#label option[value='triangle']", state="attached")
                    page.select_option("#label", "triangle")
                    page.fill("#n", "4")
                    page.click("#generate")
                    page.wait_for_selector(".sample img")
                    shown = [img.evaluate(COLOUR_PAGE_PIXELS) for img in page.locator(".sample img").all()]
                finally:
                    browser.close()
            red, _, blue = np.sum(shown, 0)
            assert len(shown) == 4 and blue > 1.5 * red, (red, blue)
