"""The retrain flow's own decisions (tasks/retrain.py): guardrails, new data, the record of every run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
HOUR = 3600.0


@pytest.fixture
def params(tmp_path, monkeypatch):
    """The default params in an empty project folder, with the retrain section below."""
    from tasks.core.params import load

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["retrain"] |= {"cooldown_hours": 6, "max_per_day": 2, "min_new_files": 2, "min_new_ratings": 3}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    return load()


def _ran(at: float, outcome: str = "rejected") -> dict:
    return {"started_at": at, "outcome": outcome}


def test_guardrails_name_what_stops_a_run(params):
    from tasks.retrain import guardrail

    rp, now = params.retrain, 1_000_000.0
    assert guardrail(rp, now, []) is None
    assert guardrail(rp, now, [_ran(now - 2 * HOUR)]).startswith("cooldown: ")
    assert "4.0 h of 6 h left" in guardrail(rp, now, [_ran(now - 2 * HOUR)])
    # skipped runs start no cooldown and count for no cap
    assert guardrail(rp, now, [_ran(now - HOUR, "skipped")] * 5) is None
    two_today = [_ran(now - 20 * HOUR), _ran(now - 10 * HOUR)]
    assert guardrail(rp, now, two_today).startswith("max_per_day: 2 retrains in the last 24 hours")
    assert guardrail(rp, now + 5 * HOUR, two_today) is None  # the first is a day old by then


def test_new_data_is_what_the_last_retrain_lacked(params):
    from service.store import Store
    from tasks.core import paths
    from tasks.core.params import line
    from tasks.core.storage import write_json
    from tasks.registry import store
    from tasks.retrain import TRAINED, begin, check_new_data, finish, new_data, too_little

    files = [{"path": f"{i}.png", "sha256": f"{i:064x}"} for i in range(5)]
    paths.RAW.mkdir(parents=True)
    write_json(paths.MANIFEST, {"files": files})
    TRAINED.parent.mkdir(parents=True)
    write_json(TRAINED, [f["sha256"] for f in files[:4]])
    tag = f"{store.name_of(line(params))}:v1"
    db = Store(Path(".genloop/serving"))
    for rating in (5, 1):
        db.add_feedback(f"r-{rating}", rating, "", tag)
    db.add_feedback("other-0", 5, "", "another-line:v1")  # another model's rating: not counted

    new = new_data(params, since=None, now=4e9)
    assert new == {"files": 1, "ratings": 2}
    assert too_little(params.retrain, new) == (
        "min_new_data: 1 new source files (min_new_files 2) and 2 new ratings (min_new_ratings 3) "
        "since the last retrain"
    )
    assert too_little(params.retrain, {"files": 2, "ratings": 0}) is None
    assert too_little(params.retrain, {"files": 0, "ratings": 3}) is None

    # a run that goes on records what it trains on: the next one starts from there
    record = check_new_data(params, begin(params, "person", None, force=True))
    assert record["skipped"] is None and json.loads(TRAINED.read_text()) == sorted(f["sha256"] for f in files)
    finish(params, record, "rejected", version=tag, reasons=["no better"])
    after = check_new_data(params, begin(params, "drift", {"scores": {"output": 2.1}}, force=False))
    assert after["new"] == {"files": 0, "ratings": 0} and after["skipped"].startswith("min_new_data")


def test_every_run_is_recorded_and_the_history_is_bounded(params):
    from tasks import retrain
    from tasks.core.params import load

    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["retrain"]["keep_history"] = 3
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    params = load()
    with pytest.raises(Exception, match="unknown retrain trigger 'cron'"):
        retrain.begin(params, "cron", None, False)
    first = retrain.begin(params, "drift", {"scores": {"output": 3.2}}, False, now=1_000_000.0)
    assert first["skipped"] is None
    retrain.finish(params, first, "promoted", version="line:v2", deployed="line:b2")
    second = retrain.begin(params, "schedule", None, False, now=1_000_000.0 + HOUR)
    assert second["skipped"].startswith("cooldown: ")
    retrain.finish(params, second, "skipped")
    assert "genloop flow retrain --force" in retrain.describe(second | {"outcome": "skipped"})
    assert retrain.ended(second | {"outcome": "skipped"}).name == "Skipped"  # the UI's runs list
    for _ in range(3):
        retrain.finish(
            params, retrain.begin(params, "person", None, True), "failed", error="stage train failed"
        )
    runs = retrain.history()
    assert len(runs) == 3 and all(r["outcome"] == "failed" for r in runs)  # the last 3 kept
    assert retrain.describe(first | {"outcome": "promoted", "version": "line:v2", "deployed": "b"}).endswith(
        "drift     promoted line:v2, deployed"
    )
    md = retrain.markdown(retrain.history()[-1])
    assert "by **person**" in md and "error: stage train failed" in md


def test_the_feedback_trigger_fires_once_per_batch_of_new_ratings(params):
    from service.store import Store
    from tasks.core.params import line
    from tasks.registry import store
    from tasks.retrain import feedback_due, feedback_sent

    tag = f"{store.name_of(line(params))}:v1"
    db = Store(Path(".genloop/serving"))
    for i in range(2):
        db.add_feedback(f"r-{i}", 4, "", tag)
    assert feedback_due(params) is None
    db.add_feedback("r-2", 2, "", tag)
    assert feedback_due(params) == {"ratings": 3, "since": None}
    feedback_sent(feedback_due(params))  # the event went out: the next monitor runs find nothing new
    assert feedback_due(params) is None
    for i in range(3, 6):
        db.add_feedback(f"r-{i}", 5, "", tag)
    assert feedback_due(params) == {"ratings": 6, "since": None}  # the next batch
    feedback_sent(feedback_due(params))
    assert feedback_due(params) is None
    from tasks import retrain

    held = retrain.begin(params, "feedback", None, False)
    retrain.finish(params, held | {"skipped": "max_per_day: ..."}, "skipped")
    assert feedback_due(params) == {"ratings": 6, "since": None}  # its retrain was held back: again


def test_prefect_yaml_wires_the_loop():
    """The retrain and monitor deployments: one at a time; a paused weekly schedule; both triggers."""
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    retrain = deployments["retrain"]
    assert retrain["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    (weekly,) = retrain["schedules"]
    assert weekly["active"] is False and weekly["parameters"] == {"trigger": "schedule"}
    events = {t["expect"][0]: t["parameters"]["trigger"] for t in retrain["triggers"]}
    assert events == {"genloop.drift.detected": "drift", "genloop.feedback.ready": "feedback"}
    assert deployments["monitor"]["schedules"][0] == {"cron": "0 * * * *", "timezone": "UTC", "active": True}
    assert deployments["monitor"]["concurrency_limit"] == retrain["concurrency_limit"]  # hourly, not stacked
