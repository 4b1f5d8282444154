"""The drift monitor end to end: a deployed model (real `bentoml serve`) gets traffic drawn like its
training data, traffic of one class only, and traffic from another model; the monitor (real Evidently)
must stay quiet on the first and name the right check on the others."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import serving
from tests.test_service import deployed_champion
from tests.test_train import QUICK

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = 200  # samples per window (monitor.window_samples and min_samples)
WINDOWS = 20  # in-distribution windows for the false-alarm rate


@pytest.fixture(scope="module")
def watched(tmp_path_factory, champion_digits):
    """A champion VAE, deployed; undeployed at the end."""
    project = deployed_champion(
        champion_digits,
        tmp_path_factory.mktemp("monitor") / "project",
        {"max_samples": 50},
        monitor={"window_samples": WINDOW, "min_samples": WINDOW},
    )
    yield project
    project.run("genloop", "undeploy")


def send(url: str, samples: int, seed: int, label: str | None = None, per_request: int = 50) -> None:
    """Requests of `per_request` samples: of `label`, or with label None of each digit in turn (one
    label per request, as a user picking classes would), or with label "" of no label asked."""
    for j, i in enumerate(range(0, samples, per_request)):
        asked = str((seed + j) % 10) if label is None else label
        body = {"n": per_request, "seed": seed * 1000 + i} | ({"label": asked} if asked else {})
        r = httpx.post(url + "/generate", json=body, timeout=60)
        assert r.status_code == 200, r.text


def monitor_at(project, times: list[float]) -> list[dict]:
    """monitor.run for windows ending at each time, in one process (the flow's own function)."""
    code = (
        "import json, sys; from tasks.core.params import load; from tasks.monitor import run; "
        f"print(json.dumps([run(load(), now=t) for t in {times!r}]))"
    )
    out = project.run("python", "-c", code, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_drift_is_found_by_the_check_that_should_find_it_and_only_then(watched):
    # traffic drawn like the training data (every class in turn), window after window
    ends = []
    for w in range(WINDOWS):
        send(watched.url, WINDOW, seed=w * 20, per_request=10)
        ends.append(time.time())
        time.sleep(0.01)
    decisions = monitor_at(watched, ends)
    alarms = [d for d in decisions if d["drift"]]
    rate = len(alarms) / WINDOWS
    print(f"false-alarm rate over {WINDOWS} windows of {WINDOW} samples: {rate:.2f}")
    for d in decisions:
        checks = d["checks"]
        assert checks["input"]["status"] == "ok" and checks["request"]["status"] == "ok"
        assert checks["output"]["sizes"]["current"] == WINDOW
    # the thresholds are effect sizes set well above sampling noise at this window: at most 1 in 20
    worst = {}  # the largest in-distribution score of each check, as a share of its threshold
    for d in decisions:
        for name, check in d["checks"].items():
            if check["score"] is not None and not check["informational"]:
                worst[name] = max(worst.get(name, 0.0), check["score"])
    print("largest in-distribution score / threshold per check:", worst)
    assert rate <= 0.05, [d["drifted_checks"] for d in alarms]

    # one class only: the requests moved; the outputs are those of the same model, compared with its
    # own samples of that class, so the output check stays quiet: the world moved, not the model
    send(watched.url, WINDOW, seed=99, label="3")
    shifted = monitor_at(watched, [time.time()])[0]
    assert shifted["drift"] and "request" in shifted["drifted_checks"]
    assert shifted["checks"]["request"]["drifted"] == ["labels"]
    assert shifted["checks"]["output"]["status"] == "ok", shifted["checks"]["output"]

    # balanced traffic again: a window of both still says drift, and that its newest half does not
    send(watched.url, WINDOW, seed=41, per_request=10)
    watched.set_params(monitor={"window_samples": 2 * WINDOW})
    both = monitor_at(watched, [time.time()])[0]
    watched.set_params(monitor={"window_samples": WINDOW})
    assert "request" in both["drifted_checks"], both["drifted_checks"]
    assert both["window"]["newest_half"]["drifted"] == [], both["window"]

    # the same requests answered by another model (a barely trained version of the line): outputs moved
    watched.set_params(train=QUICK | {"max_steps": 10, "steps_per_epoch": 10})
    watched.run("dvc", "repro", "evaluate", check=True)
    other = json.loads((watched.root / "artifacts/evaluate/decision.json").read_text())["challenger"]
    with serving(watched, other) as url:
        send(url, WINDOW, seed=7, per_request=10)
    swapped = monitor_at(watched, [time.time()])[0]
    assert swapped["drift"] and "output" in swapped["drifted_checks"]
    assert swapped["checks"]["request"]["status"] == "ok"  # same requests: the model moved, not the world

    # the flow itself: report, history, chart, status
    result = watched.run("genloop", "flow", "monitor", check=True)
    assert "drift monitor:" in result.stdout + result.stderr
    assert f"window: {WINDOW} served samples, " in result.stdout, result.stdout  # its span, not JSON
    assert len(result.stdout.splitlines()) < 10, result.stdout
    history = (watched.root / "artifacts/monitor/history.jsonl").read_text().splitlines()
    assert len(history) == WINDOWS + 4
    folder = sorted(p for p in (watched.root / "artifacts/monitor").iterdir() if p.is_dir())[-1]
    assert {"report.html", "decision.json", "scores.png", "evidently.html"} <= {
        p.name for p in folder.iterdir()
    }
    status = watched.run("genloop", "status", check=True).stdout
    assert "Drift monitor" in status and "drift: output" in status
    the_drift_starts_a_retrain_that_deploys_or_says_why_not(watched)


def the_drift_starts_a_retrain_that_deploys_or_says_why_not(watched) -> None:
    """The loop end to end: the retrain flow, started the way the retrain deployment's trigger starts it
    on the monitor's drift (trigger drift, the event's scores), trains a new version and deploys it, or
    the gate rejects it with its reasons."""
    # a new version of the champion's kind (another seed); the same digits collected again: no new files
    champion_kind = QUICK | {"max_steps": 240, "steps_per_epoch": 40, "seed": 7}
    watched.set_params(train=champion_kind, retrain={"min_new_files": 0})
    code = (
        "import json; from flows.retrain import retrain; from tasks.monitor import history; "
        "d = history(1)[-1]; detail = {k: d[k] for k in ('scores', 'drifted_checks')}; "
        "print(json.dumps(retrain(trigger='drift', detail=detail)))"
    )
    before = json.loads((watched.root / ".genloop/deploy/current.json").read_text())
    watched.run("python", "-c", code, check=True)
    (record,) = [
        json.loads(line)
        for line in (watched.root / "artifacts/retrain/history.jsonl").read_text().splitlines()
    ]
    assert record["trigger"] == "drift" and "output" in record["detail"]["drifted_checks"], record
    assert record["new"]["files"] == 0, record  # the first retrain weighs against the champion's data
    served = httpx.get(watched.url + "/version", timeout=30).json()["model"]
    if record["outcome"] == "promoted":
        after = json.loads((watched.root / ".genloop/deploy/current.json").read_text())
        assert after["bento"] == record["deployed"] != before["bento"] and served == record["version"]
    else:
        assert record["outcome"] == "rejected" and record["reasons"], record
        assert served == before["model"]  # the champion keeps serving


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)")
def test_the_report_opens_with_no_network(watched):
    from playwright.sync_api import sync_playwright

    watched.run("genloop", "flow", "monitor", check=True)
    folder = sorted(p for p in (watched.root / "artifacts/monitor").iterdir() if p.is_dir())[-1]
    asked = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page()
        page.route("http*://**", lambda route: (asked.append(route.request.url), route.abort()))
        page.goto((folder / "report.html").as_uri())
        assert page.locator("img[alt='scores over time']").evaluate("img => img.naturalWidth") > 0
        page.click("text=Evidently report of every check")
        page.wait_for_selector(".js-plotly-plot", timeout=60_000)  # Evidently's own plots, drawn
        browser.close()
    assert asked == []
