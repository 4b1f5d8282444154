"""The alias record of champions, in its local file and in PostgreSQL (site.database): concurrent
promotions lose nothing, a rollback holds its demoted version back, and undoing it restores the record."""

from __future__ import annotations

import multiprocessing

import pytest

from tasks.core.errors import GenloopError
from tests.postgres_server import new_database, postgres


@pytest.fixture(scope="module")
def postgres_server():
    with postgres() as url:
        yield url


@pytest.fixture(params=["file", pytest.param("postgresql", marks=pytest.mark.slow)])
def record_in(request, tmp_path, monkeypatch) -> str:
    """Where the record lives for this test: the file beside a fresh store, or a fresh database."""
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path))
    if request.param == "postgresql":
        database = new_database(request.getfixturevalue("postgres_server"))
        monkeypatch.setenv("GENLOOP_SITE_DATABASE", database)
        return database
    monkeypatch.delenv("GENLOOP_SITE_DATABASE", raising=False)
    return "file"


def _promote_many(home: str, worker: int, count: int) -> None:
    import os

    os.environ["BENTOML_HOME"] = home
    from tasks.registry import champions

    for i in range(count):
        champions.promote(f"genloop-vae:w{worker}v{i}", f"worker {worker}")


def test_promotions_from_several_processes_lose_no_update(record_in, tmp_path):
    """Without the lock (the file's, or the row's in the database), two processes reading the record at
    once each write back their own version of it, and one promotion disappears from the history."""
    from tasks.registry import champions

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


def test_a_promotion_over_a_champion_that_changed_meanwhile_is_refused(record_in):
    """The gate compared a challenger with the champion it read: if another flow promoted in between,
    the challenger must be judged again, not silently put over a champion it never met."""
    from tasks.registry import champions

    assert champions.promote("genloop-vae:a", "first", over=None)
    assert champions.promote("genloop-vae:b", "beat a", over="genloop-vae:a")
    assert not champions.promote("genloop-vae:c", "beat a", over="genloop-vae:a")  # b came in between
    assert champions.champion("genloop-vae") == "genloop-vae:b"


def test_a_rollback_demotes_and_can_be_undone(record_in, tmp_path):
    from tasks.registry import champions

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


def test_the_database_record_is_the_one_every_machine_reads(record_in, tmp_path, monkeypatch):
    """With site.database set, nothing is written beside the store: another machine (another store)
    reads the same champion; without it, each store has its own record."""
    from tasks.registry import champions

    champions.promote("genloop-vae:v1", "first")
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "elsewhere"))
    if record_in == "file":
        assert champions.champion("genloop-vae") is None
        assert (tmp_path / champions.RECORD).is_file()
    else:
        assert champions.champion("genloop-vae") == "genloop-vae:v1"
        assert not (tmp_path / champions.RECORD).exists()


def test_an_unreachable_database_names_the_setting_and_writes_nothing_here(monkeypatch, tmp_path):
    from tasks.core import site
    from tasks.registry import champions

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path))
    monkeypatch.setenv("GENLOOP_SITE_DATABASE", "postgresql://genloop@127.0.0.1:9/none")
    monkeypatch.setattr(site, "CONNECT_TIMEOUT_S", 2)
    with pytest.raises(
        GenloopError, match=r"site\.database \(postgresql://genloop@127\.0\.0\.1:9/none\)"
    ) as err:
        champions.promote("genloop-vae:v1", "first")
    assert "\n" not in str(err.value)
    assert not (tmp_path / champions.RECORD).exists()  # nothing local written instead
