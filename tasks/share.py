"""The flows' exchange with the site's shared stores (tasks/core/remote.py): pull what the DVC remote
has before the stages run, push what they made after. With no site.remote both do nothing."""

from __future__ import annotations

from tasks.core.orchestration import task


def _line() -> str:
    from tasks.core.params import line, load

    return line(load())


@task(name="site: pull")
def pull_task() -> dict:
    """The line's dvc.lock and the outputs it names, from site.remote: DVC then finds up to date every
    stage another checkout already ran."""
    from tasks.core import remote, site

    if not site.current().remote:
        remote.forget()  # a site unset since: DVC's default remote is the local cache again
        return {"remote": None}
    return remote.pull(_line())


@task(name="site: push")
def push_task() -> dict:
    """What the stages made, and the line's dvc.lock, to site.remote."""
    from tasks.core import remote, site

    if not site.current().remote:
        return {"remote": None}
    return remote.push(_line())


def migrate() -> dict:
    """Copy this machine's state into the site's shared stores, so a user who started on a laptop keeps
    their history: every registered version and Bento to site.remote (BentoML's export, skipped when
    there already), each line's champion record to site.database (a line the database already holds
    with another history is left as it is, and named), this deployment's serving.db into the shared
    log, and the stage outputs with dvc.lock to the DVC remote."""
    import json

    from tasks.core import site
    from tasks.core.errors import GenloopError
    from tasks.core.storage import read_json
    from tasks.registry import champions, shared, store

    here = site.current()
    if not here.remote and not here.database:
        raise GenloopError("no site is set: set site.remote and/or site.database in params.yaml first")
    done: dict = {"versions": [], "bentos": [], "lines": [], "kept": []}
    if here.remote:
        bentoml = store.bentoml()
        for version in store.versions():
            if shared.export("models", version["tag"]):
                done["versions"].append(version["tag"])
        for bento in bentoml.bentos.list():
            if bento.tag.name == "genloop" and shared.export("bentos", str(bento.tag)):
                done["bentos"].append(str(bento.tag))
    if here.database:
        local = store.home() / champions.RECORD
        record = read_json(local) if local.is_file() else {}
        for name, entry in record.items():
            if champions.adopt(name, entry):
                done["lines"].append(name)
            elif json.dumps(champions.record().get(name), sort_keys=True) != json.dumps(
                entry, sort_keys=True
            ):
                done["kept"].append(name)
        from tasks.serving.process import SERVING

        if (SERVING / "serving.db").is_file():
            done["log"] = copy_log(SERVING / "serving.db", here.database)
    if here.remote:
        from tasks.core import remote
        from tasks.core.params import line, load

        name = line(load())
        # the team's dvc.lock of the line, when there is one, stays theirs: only the outputs go up
        done["dvc"] = remote.push(name, share_lock=remote.shared_lock(name, here.remote) is None)
    return done


def copy_log(path, url: str) -> dict[str, int]:
    """The rows of a serving.db into site.database's log, in one transaction; rows already there (a
    migration run twice) are not copied again. Returns the rows copied per table."""
    import sqlite3

    from service.shared_store import connect, migrate
    from tasks.core import site

    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    counts: dict[str, int] = {}
    try:
        with connect(url) as conn:
            migrate(conn)
            with conn.transaction(), conn.cursor() as cur:
                for table in ("requests", "samples", "feedback"):
                    if not src.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone():
                        continue  # a file of an older schema
                    rows = src.execute(f"SELECT * FROM {table}").fetchall()
                    counts[table] = 0
                    if not rows:
                        continue
                    before = cur.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                    marks = ", ".join(["%s"] * len(rows[0]))
                    if table == "feedback":  # no key of its own: the same rating at the same time
                        cur.executemany(
                            f"INSERT INTO feedback SELECT {marks} WHERE NOT EXISTS (SELECT 1 FROM feedback "
                            "WHERE sample_id = %s AND at = %s)",
                            [(*row, row[0], row[1]) for row in rows],
                        )
                    else:
                        cur.executemany(
                            f"INSERT INTO {table} VALUES ({marks}) ON CONFLICT (id) DO NOTHING", rows
                        )
                    counts[table] = cur.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] - before
    except Exception as err:
        if type(err).__module__.startswith("psycopg"):
            raise site.unreachable(url, err) from None
        raise
    finally:
        src.close()
    return counts
