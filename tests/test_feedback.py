"""Rated samples back into training (tasks/feedback.py, collect): drawn again from their seeds, merged
within retrain.max_synthetic_share, the low-rated ones only in the model card. Real DVC, a real
registered model, the service's own log format (service/store.py)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import undeclared_params
from tests.test_evaluate import SMALL_VAE
from tests.test_train import QUICK

pytestmark = pytest.mark.slow


def test_rated_samples_are_drawn_again_and_trained_on_within_the_cap(champion):
    from service.store import Store

    digits = champion  # a registered version of the digits (champion or not, it would not matter)
    tag = json.loads((digits.root / "artifacts/evaluate/decision.json").read_text())["challenger"]
    # 2 of 1,797 digits: max_synthetic_share / (1 - share) * 1797 = 2.16 -> at most 2 feedback files
    retrain = {"min_rating": 4, "max_synthetic_share": 0.0012}
    # the retrain below: a brief run (its gate, the template's lenient one, decides nothing tested here)
    digits.set_params(model=SMALL_VAE, train=QUICK, retrain=retrain)
    splits = json.loads((digits.root / "data/processed/meta.json").read_text())["originals"]

    # what the model draws for seed 123, n 4, unconditioned (classes cycle 0, 1, 2, 3), as PNG hashes;
    # in the project's own process (BentoML reads its home once per process)
    code = (
        "import json, sys; from models import export; from tasks.registry import store; "
        "from tasks.feedback import _png; from tasks.core.storage import sha256_bytes; "
        "m = export.load(store.folder(sys.argv[1]), 'cpu'); "
        "print(json.dumps([sha256_bytes(_png(x)) for x in m.sample(n=4, seed=123).numpy()]))"
    )
    drawn = json.loads(digits.run("python", "-c", code, tag, check=True).stdout.strip().splitlines()[-1])
    # what the service logs for that request
    log = Store(digits.root / ".genloop/serving")
    samples = [
        {"id": f"r1-{i}", "label": str(i), "asked": False, "stats": [0.0], "embedding": [0.0]}
        for i in range(4)
    ]
    log.log_request("r1", tag, {"n": 4, "seed": 123}, 5.0, samples)
    ratings = [("r1-0", 4, ""), ("r1-1", 5, ""), ("r1-2", 1, "<b>a smudge</b>"), ("r1-3", 5, ""),
               ("r1-0", 3, "second thoughts"), ("r1-0", 5, "")]  # fmt: skip
    for sample_id, rating, comment in ratings:
        log.add_feedback(sample_id, rating, comment, tag)  # r1-0's last rating (5) counts

    params_log = {"GENLOOP_PARAMS_LOG": str(digits.root / "params-read.jsonl")}
    digits.run("dvc", "repro", "--force", "feedback", check=True, env=params_log)  # what the flows run
    digits.run("dvc", "repro", "validate", check=True, env=params_log)
    assert undeclared_params(digits.root / "params-read.jsonl") == {}
    offered = json.loads((digits.root / "data/feedback/manifest.json").read_text())["files"]
    assert {f["sample_id"]: f["rating"] for f in offered} == {"r1-0": 5, "r1-1": 5, "r1-3": 5}
    for f in offered:  # drawn again: the same bytes the model made for that seed and position
        position = int(f["sample_id"].split("-")[1])
        assert f["sha256"] == drawn[position] and f["label"] == str(position)
    raw = json.loads((digits.root / "data/raw/manifest.json").read_text())
    assert raw["feedback"] == {
        "rated": 3, "added": 2, "left_out": 1, "max_synthetic_share": 0.0012, "share": round(2 / 1799, 4)
    }  # fmt: skip
    merged = [f for f in raw["files"] if f["source"].startswith("feedback:")]
    assert len(merged) == 2 and all(f["label"] in ("0", "1", "3") for f in merged)
    assert not [f for f in raw["files"] if "r1-2" in f["source"]]  # rated low: never trained on
    low = json.loads((digits.root / "artifacts/feedback/low_rated.json").read_text())
    assert [r["sample_id"] for r in low["low"]] == ["r1-2"]
    assert json.loads((digits.root / "artifacts/validate/summary.json").read_text())["success"]

    # nothing new: feedback runs, writes the same, and collect is not run again
    digits.run("dvc", "repro", "--force", "feedback", check=True)
    again = digits.run("dvc", "repro", "validate", check=True).stdout
    assert "Running stage 'collect'" not in again and "up to date" in again

    digits.run("dvc", "repro", "evaluate", check=True)
    # the model's own samples join the training split only: validation and test stay the real ones
    after = json.loads((digits.root / "data/processed/meta.json").read_text())["originals"]
    assert after == splits | {"train": splits["train"] + 2}
    card = (digits.root / "artifacts/evaluate/card.md").read_text()
    assert "## Feedback" in card and "trained on 2 served samples rated highly" in card
    assert "rated low, never trained on: 1" in card and "&lt;b&gt;a smudge&lt;/b&gt;" in card
