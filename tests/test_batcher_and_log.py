"""The service's in-process batching (service/batcher.py) and its log written off the request path
(service/store.py): concurrent jobs share a model call and each gets its own answer, a lone quick job
runs on the event loop, a job that waited too long is refused with 503, and the log is on disk once a
rating or a shutdown needs it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import numpy as np
import pytest


def _batcher(delay_s: float, max_latency_s: float = 10.0, fail: bool = False, per_unit_s: float = 0.0):
    from service.batcher import Batcher

    calls: list[tuple[list, str]] = []

    def run(jobs: list) -> list:
        calls.append((list(jobs), threading.current_thread().name))
        time.sleep(delay_s + per_unit_s * sum(jobs))
        if fail:
            raise RuntimeError("the model broke")
        return [job * 10 for job in jobs]

    size = (lambda job: job) if per_unit_s else (lambda job: 1.0)
    return Batcher(run, max_batch_size=8, max_latency_s=max_latency_s, size=size), calls


def test_concurrent_jobs_share_model_calls_and_get_their_own_answers():
    batcher, calls = _batcher(delay_s=0.02)

    async def main():
        assert await batcher.submit(0) == 0  # a first job on its own, through the model's thread
        return await asyncio.gather(*(batcher.submit(i) for i in range(1, 21)))

    assert asyncio.run(main()) == [i * 10 for i in range(1, 21)]
    sizes = [len(jobs) for jobs, _ in calls[1:]]
    assert sum(sizes) == 20 and max(sizes) == 8 and len(sizes) <= 4, sizes  # not one call per job
    assert all(name.startswith("model") for _, name in calls)  # off the event loop
    batcher.close()


def test_a_lone_quick_job_runs_on_the_event_loop():
    batcher, calls = _batcher(delay_s=0.0)

    async def main():
        for i in range(3):
            assert await batcher.submit(i) == i * 10

    asyncio.run(main())
    # the first call measures the model in its thread; once known to be quick, lone jobs run inline
    assert [name.startswith("model") for _, name in calls] == [True, False, False]
    batcher.close()


def test_requests_arriving_together_are_batched_even_when_the_model_is_quick():
    """A quick model's lone job may run on the event loop, but only after letting requests that arrived
    with it join: eight at once make one batch, not eight calls one after another."""
    batcher, calls = _batcher(delay_s=0.0)

    async def main():
        await batcher.submit(0)  # measures the model: quick, so a lone job would run inline
        return await asyncio.gather(*(batcher.submit(i) for i in range(1, 9)))

    assert asyncio.run(main()) == [i * 10 for i in range(1, 9)]
    assert [len(jobs) for jobs, _ in calls[1:]] == [8], calls
    batcher.close()


def test_a_big_job_never_blocks_the_event_loop_and_a_cancelled_one_leaves_the_queue():
    """Jobs of size 1 are quick (1 ms a unit); one of size 100 would hold the loop for 0.1 s: it goes to
    the model's thread. A request cancelled while its lone job waits for company takes the job along."""
    batcher, calls = _batcher(delay_s=0.0, per_unit_s=0.001)

    async def main():
        for _ in range(3):
            await batcher.submit(1)
        await batcher.submit(100)
        lone = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0)  # it is waiting for company
        lone.cancel()
        await asyncio.gather(lone, return_exceptions=True)
        return len(batcher.queue)

    assert asyncio.run(main()) == 0
    threads = [(jobs, name.startswith("model")) for jobs, name in calls]
    assert threads == [([1], True), ([1], False), ([1], False), ([100], True)]
    batcher.close()


def test_a_job_that_waited_past_max_latency_gets_503_and_errors_reach_every_job():
    from bentoml.exceptions import ServiceUnavailable

    batcher, calls = _batcher(delay_s=0.2, max_latency_s=0.05)

    async def main():
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.01)  # the first batch is running
        late = asyncio.ensure_future(batcher.submit(2))
        return await asyncio.gather(first, late, return_exceptions=True)

    first, late = asyncio.run(main())
    assert first == 10
    assert isinstance(late, ServiceUnavailable) and "overloaded" in str(late)
    assert [jobs for jobs, _ in calls] == [[1]]  # the late job never reached the model
    batcher.close()

    broken, _ = _batcher(delay_s=0.0, fail=True)

    async def both():
        return await asyncio.gather(broken.submit(1), broken.submit(2), return_exceptions=True)

    assert [str(e) for e in asyncio.run(both())] == ["the model broke"] * 2
    broken.close()


def _rows(path, sql: str) -> list:
    db = sqlite3.connect(path)  # another connection: what is on disk
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _sample(request_id: str, i: int = 0) -> dict:
    return {"id": f"{request_id}-{i}", "written": np.full(4, float(i), np.float32)}


def test_the_log_is_written_in_groups_and_a_rating_commits_what_it_rates(tmp_path, monkeypatch):
    from service import store as store_module
    from service.store import Store

    monkeypatch.setattr(store_module, "WRITE_EVERY_S", 3600.0)  # the writer waits: nothing else writes
    featurized: list[int] = []

    def featurize(written: list):
        featurized.append(len(written))
        x = np.stack(written)
        return x[:, :2], x[:, 2:]

    store = Store(tmp_path, featurize=featurize)
    store.log_request("a" * 32, "genloop-x:1", {"n": 1, "seed": 1}, 1.0, [_sample("a" * 32)])
    time.sleep(0.2)  # the writer's first group: this request alone
    ids = ["b" * 32, "c" * 32]
    for rid in ids:
        store.log_request(rid, "genloop-x:1", {"n": 2, "seed": 2}, 1.0, [_sample(rid, 0), _sample(rid, 1)])
    time.sleep(0.2)
    assert _rows(store.path, "SELECT id FROM requests") == [("a" * 32,)]  # the others wait for the next
    assert store.known_sample(f"{ids[1]}-1") and not store.known_sample(f"{ids[1]}-2")  # known already
    store.add_feedback(f"{ids[1]}-1", 5, "", "genloop-x:1")
    # the rating and every request logged before it are on disk together, featurized as one group
    assert sorted(_rows(store.path, "SELECT id FROM requests")) == [("a" * 32,), *[(i,) for i in ids]]
    assert _rows(store.path, "SELECT sample_id, rating FROM feedback") == [(f"{ids[1]}-1", 5)]
    assert featurized == [1, 4]
    stats = _rows(store.path, f"SELECT stats FROM samples WHERE id = '{ids[0]}-1'")
    assert stats == [("[1.0, 1.0]",)]

    store.log_request("d" * 32, "genloop-x:1", {"n": 1, "seed": 3}, 1.0, [_sample("d" * 32)])
    store.close()  # the service's shutdown: what is queued is written, though the writer was waiting
    assert ("d" * 32,) in _rows(store.path, "SELECT id FROM requests")


@pytest.mark.parametrize("kind", ["image", "text"])
def test_the_services_features_match_the_monitors(kind):
    """What the service logs for a batch is what models/features.py computes per sample: batching the
    featurizer across requests changes nothing."""
    from models.features import ImageFeaturizer, features

    rng = np.random.default_rng(0)
    if kind == "image":
        written = list(rng.random((5, 1, 8, 8), dtype=np.float32))
        whole = features(kind, np.stack(written), ImageFeaturizer(None))
        one = [features(kind, w[None], ImageFeaturizer(None)) for w in written]
    else:
        written = ["hello world", "a b c", "", "Zzz.", "the end"]
        whole = features(kind, written)
        one = [features(kind, [w]) for w in written]
    for i, (st, emb) in enumerate(one):
        np.testing.assert_allclose(whole[0][i], st[0], rtol=1e-6)
        np.testing.assert_allclose(whole[1][i], emb[0], rtol=1e-6)


def test_a_failed_write_keeps_the_log_and_tries_again(tmp_path, monkeypatch):
    """A write that fails (here the featurizer, once; a locked or full disk alike) loses nothing: the
    rows wait for the next try; and a rating that fails leaves the log queued for the next write."""
    from service import store as store_module
    from service.store import Store

    monkeypatch.setattr(store_module, "WRITE_EVERY_S", 3600.0)
    failures = [RuntimeError("featurizer down")]

    def featurize(written: list):
        if failures:
            raise failures.pop()
        x = np.stack(written)
        return x[:, :2], x[:, 2:]

    store = Store(tmp_path, featurize=featurize)
    first, second = "e" * 32, "f" * 32
    store.log_request(first, "genloop-x:1", {"n": 1, "seed": 1}, 1.0, [_sample(first)])
    for _ in range(100):  # the writer's try, which fails
        if not failures:
            break
        time.sleep(0.02)
    time.sleep(0.05)
    assert not failures and _rows(store.path, "SELECT id FROM requests") == []
    assert store.known_sample(f"{first}-0")  # still queued, not forgotten
    store.add_feedback(f"{first}-0", 5, "", "genloop-x:1")  # writes it, with the rating
    assert _rows(store.path, "SELECT id FROM requests") == [(first,)]

    store.log_request(second, "genloop-x:1", {"n": 1, "seed": 2}, 1.0, [_sample(second)])
    with pytest.raises(sqlite3.IntegrityError):  # a rating that fails in its transaction
        store.add_feedback(None, 5, "", "genloop-x:1")
    store.flush()
    assert sorted(_rows(store.path, "SELECT id FROM requests")) == [(first,), (second,)]
    assert _rows(store.path, "SELECT sample_id, rating FROM feedback") == [(f"{first}-0", 5)]
    store.close()
