"""The alias record of champions: concurrent promotions lose nothing, a rollback holds its demoted
version back, and undoing it restores the record."""

from __future__ import annotations

import multiprocessing

import pytest

from tasks.core.errors import GenloopError


def _promote_many(home: str, worker: int, count: int) -> None:
    import os

    os.environ["BENTOML_HOME"] = home
    from tasks.registry import champions

    for i in range(count):
        champions.promote(f"genloop-vae:w{worker}v{i}", f"worker {worker}")


def test_promotions_from_several_processes_lose_no_update(tmp_path, monkeypatch):
    """Without the file lock, two processes reading the record at once each write back their own
    version of it, and one promotion disappears from the history."""
    from tasks.registry import champions

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path))
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_promote_many, args=(str(tmp_path), w, 15)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0
    entry = champions.record()["genloop-vae"]
    assert len(entry["history"]) == 60  # every promotion, none overwritten by another process
    promoted = [e["tag"] for e in entry["history"]]
    assert entry["previous"] == promoted[:-1] and entry["champion"] == promoted[-1]


def test_a_promotion_over_a_champion_that_changed_meanwhile_is_refused(tmp_path, monkeypatch):
    """The gate compared a challenger with the champion it read: if another flow promoted in between,
    the challenger must be judged again, not silently put over a champion it never met."""
    from tasks.registry import champions

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path))
    assert champions.promote("genloop-vae:a", "first", over=None)
    assert champions.promote("genloop-vae:b", "beat a", over="genloop-vae:a")
    assert not champions.promote("genloop-vae:c", "beat a", over="genloop-vae:a")  # b came in between
    assert champions.champion("genloop-vae") == "genloop-vae:b"


def test_a_rollback_demotes_and_can_be_undone(tmp_path, monkeypatch):
    from tasks.registry import champions

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path))
    with pytest.raises(GenloopError, match="no previous champion"):
        champions.rollback("genloop-gpt")
    champions.promote("genloop-gpt:v1", "first")
    champions.promote("genloop-gpt:v2", "better")
    assert champions.rollback("genloop-gpt") == ("genloop-gpt:v2", "genloop-gpt:v1")
    assert champions.champion("genloop-gpt") == "genloop-gpt:v1"
    assert champions.rolled_back("genloop-gpt:v2")["restored"] == "genloop-gpt:v1"
    assert champions.alias(champions.record(), "genloop-gpt:v2") == "rolled back"
    champions.undo_rollback("genloop-gpt:v2", "genloop-gpt:v1", "could not serve v1")
    assert champions.champion("genloop-gpt") == "genloop-gpt:v2"
    assert champions.rolled_back("genloop-gpt:v2") is None
    assert champions.record()["genloop-gpt"]["previous"] == ["genloop-gpt:v1"]
