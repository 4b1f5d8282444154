"""The drift monitor's pieces without a server: the shared features, the log's migration, the checks
(real Evidently), the ratings check and the chart."""

from __future__ import annotations

import json
import sqlite3
import time

import numpy as np
import pytest
from prefect.testing.fixtures import asserting_events_worker  # noqa: F401 Prefect's own harness

from models.features import NGRAM_BUCKETS, TEXT_STATS, bigram_buckets, text_features


def test_text_features_are_fixed_per_text_whatever_the_process():
    stats, grams = text_features(["Hello, world 42", "ab"])
    assert stats.shape == (2, len(TEXT_STATS)) and grams.shape == (2, NGRAM_BUCKETS)
    length, letters, digits = stats[0][:3]
    assert length == 15 and letters == pytest.approx(10 / 15) and digits == pytest.approx(2 / 15)
    assert grams[0].sum() == pytest.approx(1.0) and grams[1].sum() == pytest.approx(1.0)
    # a fixed hash, not Python's per-process one; and letters do not share buckets with digits wholesale
    ab = int(bigram_buckets(np.array([ord("a")], np.uint64), np.array([ord("b")], np.uint64))[0])
    assert grams[1][ab] == 1.0
    letters = {int(b) for b in bigram_buckets(*np.array([[ord("p")] * 26, range(97, 123)], np.uint64))}
    digits = {int(b) for b in bigram_buckets(*np.array([[ord("0")] * 10, range(48, 58)], np.uint64))}
    assert len(letters) > 10 and letters != digits


def test_the_log_migration_keeps_the_rows_of_an_older_file(tmp_path):
    from service.store import MIGRATIONS, Store

    db = sqlite3.connect(tmp_path / "serving.db")
    db.executescript(MIGRATIONS[0])  # a file written before per-sample rows existed
    db.execute(
        "INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            "r1",
            time.time(),
            "genloop-x:1",
            2,
            5,
            None,
            0,
            None,
            None,
            3.0,
            "{}",
            json.dumps(["r1-0", "r1-1"]),
        ),
    )
    db.execute("INSERT INTO feedback VALUES (?,?,?,?,?)", ("r1-0", time.time(), 4, "fine", "genloop-x:1"))
    db.commit()
    db.close()
    (tmp_path / "serving.db").chmod(0o644)
    store = Store(tmp_path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert (tmp_path / "serving.db").stat().st_mode & 0o777 == 0o600  # comments: the owner's only
    assert store.known_sample("r1-1") and store.db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 1
    store.log_request(
        "r2",
        "genloop-x:1",
        {"n": 1, "seed": 9},
        2.0,
        [{"id": "r2-0", "label": "3", "stats": [0.1, 0.2, 0.3], "embedding": [1.0, 2.0]}],
    )
    store.flush()  # the log is written off the request path
    row = store.db.execute("SELECT seed, position, n, label, embedding FROM samples").fetchone()
    assert row[:4] == (9, 0, 1, "3") and np.frombuffer(row[4], np.float32).tolist() == [1.0, 2.0]
    Store(tmp_path)  # opening again migrates nothing and keeps everything
    assert store.db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 2


METHODS = {
    "numeric": {"method": "wasserstein", "threshold": 0.2},
    "categorical": {"method": "jensenshannon", "threshold": 0.1},
    "embedding": {"method": "mmd", "threshold": 0.02},
}


def side(rng, n: int, shift: float = 0.0) -> dict:
    return {
        "n": n,
        "stats": {"mean": rng.normal(shift, 1, n), "ink": rng.uniform(0, 1, n)},
        "embedding": rng.normal(shift, 1, (n, 8)),
    }


def test_a_shift_is_found_by_the_features_that_moved_and_no_shift_is_not():
    from tasks.monitoring.checks import compare

    rng = np.random.default_rng(0)
    reference = side(rng, 2000)
    same = compare("output", reference, side(rng, 400), METHODS, min_samples=100, max_rows=500)
    assert same.status == "ok" and same.drifted == [] and same.score < 1
    moved = compare("output", reference, side(rng, 400, shift=1.0), METHODS, min_samples=100, max_rows=500)
    assert moved.status == "drift" and set(moved.drifted) == {"mean", "embedding"}  # ink did not move
    assert moved.score > 1 and {f["method"] for f in moved.features} == {"wasserstein", "mmd"}
    few = compare("output", reference, side(rng, 50, shift=1.0), METHODS, min_samples=100, max_rows=500)
    assert few.status == "not enough data" and few.features == []


def test_distributions_are_compared_by_their_shares_not_their_totals():
    from tasks.monitoring.checks import compare

    ref = {"n": 10_000, "counts": {"labels": {str(k): 1000 for k in range(10)}}}
    uniform = {"n": 300, "counts": {"labels": {str(k): 30 for k in range(10)}}}
    one_class = {"n": 300, "counts": {"labels": {"3": 300}}}
    assert compare("request", ref, uniform, METHODS, min_samples=100, max_rows=500).status == "ok"
    check = compare("request", ref, one_class, METHODS, min_samples=100, max_rows=500)
    assert check.status == "drift" and check.drifted == ["labels"]


def test_text_windows_compare_as_character_and_bigram_distributions():
    from tasks.monitoring.checks import compare, text_counts

    prose = [
        "The quick brown fox jumps over the lazy dog. " * 3,
        "A sentence of plain words here. " * 4,
    ] * 150
    code = ["def f(x):\n    return x[0] + 1  # {}\n" * 3, "for i in range(10): print(i ** 2)\n" * 3] * 150

    def window(texts):
        stats, grams = text_features(texts)
        return {"n": len(texts), "counts": text_counts(stats, grams, TEXT_STATS)}

    reference = window(prose)
    assert compare("request", reference, window(prose[:200]), METHODS, 100, 500).status == "ok"
    check = compare("request", reference, window(code[:200]), METHODS, 100, 500)
    assert check.status == "drift" and set(check.drifted) == {"characters", "bigrams"}


def test_the_ratings_check_compares_with_the_window_before(tmp_path):
    from service.store import Store
    from tasks.core.params import MonitorRatings
    from tasks.monitor import _ratings
    from tasks.monitoring.logs import ServingLogs

    store = Store(tmp_path)
    now = time.time()
    for i in range(40):  # 20 good ratings an hour ago, then 20 poor ones
        when = now - 3600 - 1800 + i * 60 if i < 20 else now - 1800 + (i - 20) * 60
        store.db.execute(
            "INSERT INTO feedback VALUES (?,?,?,?,?)", (f"s{i}", when, 5 if i < 20 else 1, "", "genloop-x:1")
        )
    rp = MonitorRatings(low=2, max_mean_drop=0.5, max_low_share_rise=0.2, min_ratings=20)
    check = _ratings(ServingLogs([tmp_path / "serving.db"]), "genloop-x:", now - 3600, now, rp)
    assert check.status == "drift" and check.drifted == ["mean_rating", "low_share"]
    rp = MonitorRatings(low=2, max_mean_drop=0.5, max_low_share_rise=0.2, min_ratings=21)
    assert _ratings(ServingLogs([tmp_path / "serving.db"]), "genloop-x:", now - 3600, now, rp).status == (
        "not enough data"
    )


def test_several_replicas_logs_read_as_one(tmp_path):
    from service.store import Store
    from tasks.monitoring.logs import ServingLogs, files

    for replica, model in (("a", "genloop-x:1"), ("b", "genloop-x:1"), ("c", "genloop-other:1")):
        store = Store(tmp_path / replica)
        sample = {"id": f"r{replica}-0", "stats": [1], "embedding": [0]}
        store.log_request(f"r{replica}", model, {"n": 1, "seed": 1}, 1.0, [sample])
        store.close()  # as the service's shutdown does: what is queued is written
    found = files([str(tmp_path / "*" / "serving.db")], tmp_path / "none")
    assert len(found) == 3
    rows = ServingLogs(found).samples("genloop-x:", since=0)
    assert sorted(r["id"] for r in rows) == ["ra-0", "rb-0"]  # another line's samples are not in it
    assert len(ServingLogs(found).samples("genloop-x:", last=1)) == 1


def test_drift_emits_the_event_retraining_listens_to(asserting_events_worker):  # noqa: F811
    from tasks.monitor import EVENT, emit

    decision = {
        "version": "genloop-sklearn-digits-vae:abc",
        "verdict": "drift",
        "drifted_checks": ["output"],
        "checks": {"output": {"score": 2.5}, "input": {"score": None}},
        "window": {"since": "2026-01-01T00:00:00+00:00", "samples": 200},
        "folder": "artifacts/monitor/x",
    }
    emit(decision)
    asserting_events_worker.drain()
    (event,) = asserting_events_worker._client.events
    assert event.event == EVENT == "genloop.drift.detected"
    assert event.resource.id == "genloop.model.genloop-sklearn-digits-vae:abc"
    assert event.payload["drifted_checks"] == ["output"] and event.payload["scores"]["output"] == 2.5


def test_the_embedding_plot_is_drawn_only_when_asked(tmp_path):
    from tasks.monitoring.checks import compare, save_html

    rng = np.random.default_rng(1)
    reference, current = side(rng, 300), side(rng, 150, shift=1.0)
    plain = compare("output", reference, current, METHODS, 100, 300)
    drawn = compare("output", reference, current, METHODS, 100, 300, embedding_plot=True)
    assert plain.plot is None and drawn.plot is not None and drawn.features == plain.features
    assert save_html([plain], tmp_path / "plain.html") and save_html([drawn], tmp_path / "drawn.html")
    page = (tmp_path / "drawn.html").read_text()
    assert (
        "Drift in embeddings" in page and "Drift in embeddings" not in (tmp_path / "plain.html").read_text()
    )


def test_the_chart_of_a_first_run_spans_an_hour_not_years():
    from matplotlib.dates import date2num

    from tasks.monitoring.report import figure

    fig = figure([{"at": "2026-12-06T10:00:00+00:00", "scores": {"output": 0.4, "input": 1.2}}])
    left, right = fig.axes[0].get_xlim()
    assert right - left == pytest.approx(1 / 24)  # matplotlib's dates are in days
    assert left < date2num(np.datetime64("2026-12-06T10:00:00")) < right


def test_the_verdict_says_what_the_window_holds():
    from datetime import UTC, datetime

    from tasks.monitor import window
    from tasks.monitoring.report import window as told

    start = datetime(2026, 12, 6, 8, 0, tzinfo=UTC).timestamp()
    times = [start + 60 * i for i in range(180)]  # one sample a minute for 3 hours
    w = window(start - 3600, times)
    assert w["samples"] == 180 and w["hours"] == 2.98 and w["last_hour_share"] == 0.333
    assert told(w) == "180 served samples, 08:00 to 10:59 UTC (2.98 h; 33% of them in its last hour)"
    assert told(window(start, [])) == "0 served samples since 2026-12-06T08:00:00+00:00"
    half = {"samples": 90, "first": "2026-12-06T09:30:00+00:00", "drifted": []}
    older = told(w | {"newest_half": half})
    assert older.endswith("its newest half (from 09:30 UTC) does not drift: the drifted part is older")
    ongoing = told(w | {"newest_half": half | {"drifted": ["request"]}})
    assert ongoing.endswith("its newest half (from 09:30 UTC) still drifts in request")
