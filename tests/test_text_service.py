"""A text model (a briefly trained GPT) through the real CLI and `bentoml serve`: prompts in, texts out,
and the drift monitor on the prompts it served. Its own file, so it runs beside test_service.py's."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from tests.conftest import free_port
from tests.test_train import QUICK

pytestmark = pytest.mark.slow


def test_a_text_model_served_end_to_end(project):
    """A (briefly trained) GPT: prompts in, texts out; prompt characters it does not know get a 400."""
    from tests.test_train import TINY_GPT

    project.set_params(
        data={"source": "pydoc:topics"},
        model={"family": "gpt", "gpt": TINY_GPT},
        train=QUICK,
        # fewer and shorter texts judged than the default 128 x 400 characters: this test is about serving
        evaluate={"text": {"samples": 16, "length": 100}},
        serve={"port": free_port(), "ready_timeout_s": 90},
    )
    project.run("dvc", "repro", "evaluate", check=True)
    version = json.loads((project.root / "artifacts/evaluate/decision.json").read_text())["challenger"]
    project.run(
        "python",
        "-c",
        f"from tasks.registry import champions; champions.promote({version!r}, 'test')",
        check=True,
    )
    project.run("genloop", "stage", "package", check=True)
    project.run("genloop", "deploy", check=True)
    try:
        url = json.loads((project.root / ".genloop/deploy/current.json").read_text())["url"]
        body = {"n": 2, "prompt": "The ", "length": 30, "seed": 3, "temperature": 0.8}
        out = httpx.post(url + "/generate", json=body).json()
        texts = [s["text"] for s in out["samples"]]
        assert len(texts) == 2 and all(t.startswith("The ") and len(t) == 34 for t in texts)
        assert httpx.post(url + "/generate", json=body).json()["samples"][0]["text"] == texts[0]  # seeded
        r = httpx.post(url + "/generate", json={"n": 1, "prompt": "naïve ☃"})
        assert r.status_code == 400 and "does not know" in r.text
        r = httpx.post(url + "/generate", json={"n": 1, "label": "3"})
        assert r.status_code == 400 and r.json() == {
            "error": "this model writes text: send `prompt`, not `label`"
        }
        # the drift monitor on prompts: pieces of the training text, then another corpus (SQL)
        raw = "".join(p.read_text() for p in sorted((project.root / "data/raw").rglob("*.txt")))
        project.set_params(monitor={"window_samples": 100, "min_samples": 100})
        for i in range(100):
            start = (i * 7919) % (len(raw) - 64)
            prompt = raw[start : start + 8 + i % 48]
            assert (
                httpx.post(url + "/generate", json={"n": 1, "prompt": prompt, "length": 20}).status_code
                == 200
            )
        quiet = json.loads(project.run("python", "-c", MONITOR, check=True).stdout.splitlines()[-1])
        assert quiet["checks"]["request"]["status"] == "ok", quiet["checks"]["request"]
        for i in range(100):
            prompt = f"SELECT ID, NAME FROM T{i} WHERE X = {i * 37} AND Y < {i};"[: 8 + i % 48]
            assert (
                httpx.post(url + "/generate", json={"n": 1, "prompt": prompt, "length": 20}).status_code
                == 200
            )
        moved = json.loads(project.run("python", "-c", MONITOR, check=True).stdout.splitlines()[-1])
        assert "request" in moved["drifted_checks"], moved["checks"]["request"]
        assert set(moved["checks"]["request"]["drifted"]) <= {"characters", "bigrams"}
        db = sqlite3.connect(project.root / ".genloop/serving/serving.db")
        stored = db.execute("SELECT COUNT(*), COUNT(prompt), COUNT(prompt_stats) FROM samples").fetchone()
        db.close()
        assert stored[0] >= 200 and stored[1] == 0 and stored[2] >= 200  # serve.log_prompts is false
    finally:
        project.run("genloop", "undeploy")


MONITOR = (
    "import json; from tasks.core.params import load; from tasks.monitor import run; "
    "print(json.dumps(run(load())))"
)
