"""`genloop status`: what is deployed and how the service is used, what the registry holds, which version
is champion, and the champion's card."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("—" if v is None else str(v))


def show(console: Console | None = None) -> None:
    import models
    from tasks.registry import store

    console = console or Console()
    if not console.is_terminal:
        console.width = 160  # a log or a pipe: no need to squeeze the table into 80 columns
    from tasks.core.errors import GenloopError

    for part in (deployment, stores, cores_plan, runner, study, drift, retrains):
        try:
            part(console)
        except GenloopError as err:  # a store that cannot be reached: say so, show the rest
            console.print(f"[bold red]{err}[/]")
    use = usage(console)
    try:
        versions = store.versions()
    except GenloopError as err:
        console.print(f"Model versions: [bold red]{err}[/]")
        return
    if not versions:
        console.print(f"No model versions in the registry ({store.home()}): run `dvc repro evaluate`.")
        return
    table = Table(title=f"Model versions ({store.home()})")
    columns = ("version", "label", "created", "headline", "memorised", "decision", "requests", "rating")
    for col in (*columns, "git", "data (dvc md5)"):
        table.add_column(col, no_wrap=col in ("version", "label"))  # a version is read and copied whole
    for v in versions:
        meta = v["metadata"]
        metrics, trail = meta.get("metrics", {}), meta.get("lineage", {})
        family = models.FAMILIES.get(v["labels"].get("family", ""))
        headline = family.headline if family else ""
        data = trail.get("dvc", {}).get("data/processed", "")
        served = use.get(v["tag"], {})
        mean = served.get("mean_rating")
        table.add_row(
            v["tag"],
            v["alias"],
            v["created"][:16].replace("T", " "),
            f"{headline} {_fmt(metrics.get(headline))}",
            _fmt(metrics.get("memorised")),
            str(meta.get("decision", "")),
            str(served.get("requests", "")),
            f"{mean:.2f} ({served['ratings']})" if mean is not None else "",
            str((trail.get("git") or {}).get("commit") or "")[:10],
            f"{trail.get('source')!s} {data[:10]}",
        )
    console.print(table)
    for v in versions:
        if v["alias"] == "champion":
            card = Path(v["path"]) / "card.md"
            console.print(f"\nChampion {v['tag']}: model card {card} (HTML beside it)\n")
            if card.is_file():
                console.print(Markdown(card.read_text()))


def deployment(console: Console) -> None:
    from tasks import deploy
    from tasks.registry import champions

    record = deploy.current()
    if record is None:
        console.print("Deployed: nothing (genloop deploy)")
    else:
        state = "running" if record["running"] else "NOT RUNNING (process gone; see its log)"
        console.print(
            f"Deployed: {record['bento']} serving {record.get('model')} at {record['url']} since "
            f"{record['since']}, {state}; pid {record['pid']}, log {record['log']}"
        )
        served = record.get("model") or ""
        champion = champions.champion(served.split(":")[0])
        if champion and champion != served:
            console.print(
                f"[bold yellow]Warning:[/] the service serves {served}, but the champion of "
                f"{served.split(':')[0]} is {champion}: package and deploy it "
                "(genloop stage package && genloop deploy)"
            )
    pending = deploy.interrupted()
    if pending is not None:
        console.print(
            f"[bold yellow]Unfinished deploy:[/] {pending['bento']} since {pending['since']} (pid "
            f"{pending.get('pid', '-')}): still starting, or interrupted; the next genloop deploy, rollback "
            "or undeploy stops what it left"
        )
    for event in deploy.history(5):
        detail = event.get("why") or event.get("reason") or event.get("url") or event.get("what") or ""
        console.print(f"  {event['at']}  {event['event']:<14} {event.get('bento', '')}  {detail}")


def stores(console: Console) -> None:
    """Where this checkout keeps its state: this machine, or the site's shared stores (passwords hidden)."""
    from tasks.core import site
    from tasks.core.errors import GenloopError

    try:
        rows = site.stores()
    except GenloopError as err:
        console.print(f"Stores: [bold red]{err}[/]")
        return
    shared = site.current().remote or site.current().database
    console.print(
        "Stores: " + ("shared (site in params.yaml)" if shared else "this machine only (no site set)")
    )
    for what, where in rows:
        console.print(f"  {what:<24} {where}")


def cores_plan(console: Console) -> None:
    """The plan for this machine's cores (models/cores.py) and the processes sharing them now."""
    from models import cores

    try:
        p = cores.plan()
    except ValueError as err:  # a wrong GENLOOP_CORES, GENLOOP_THREADS or cores section
        console.print(f"Cores: [bold red]{err}[/]")
        return
    each = f"{p['threads']} threads each (fixed)" if p["threads"] else "an equal share each"
    console.print(
        f"Cores: {p['cores']} (from {p['origin']}), shared by the processes doing math, {each}; "
        f"ledger {p['ledger']}"
    )
    if not p["processes"]:
        console.print("  none doing math now: the next stage, trial, service or monitor takes them all")
    for c in p["processes"]:
        console.print(f"  pid {c['pid']:<8} {c['role']:<16} {c['now']} thread(s)  {c['project']}")


def runner(console: Console) -> None:
    """The warm stage runner of this environment (genloop/runner.py)."""
    import time

    from genloop import runner as r

    if not r.enabled():
        console.print("Stage runner: off (GENLOOP_RUNNER=0, or not Linux): each stage imports its libraries")
        return
    found = [x for x in r.runners() if x["this"]]
    if not found:
        console.print("Stage runner: none for this environment (the next stage or flow starts one)")
        return
    idle = f"; it exits after {r.IDLE_S:g} s without a command (genloop runner stop)"
    age = time.time() - found[0]["since"]
    console.print(f"Stage runner: pid {found[0]['pid']}, warm for {age / 60:.0f} min{idle}")


def study(console: Console) -> None:
    """The last tuning study: its best value and params (artifacts/tune/)."""
    from tasks.core.space import read_tuned
    from tasks.core.storage import read_json
    from tasks.tuning.report import REPORT, SUMMARY

    summary = read_json(SUMMARY) if SUMMARY.is_file() else {}
    if not summary.get("enabled"):
        console.print("Tuning: no study yet (tune.enabled: true, then `dvc repro tune`)")
        return
    best, trials = read_tuned(), summary["trials"]
    value = summary.get("best_value")
    console.print(
        f"Tuning: study {summary['study']}: best {summary['unit']} "
        f"{'—' if value is None else f'{value:.4g}'} (trial {summary.get('best_trial')}) of "
        f"{sum(trials.values())} trials ({trials['complete']} complete, {trials['pruned']} pruned, "
        f"{trials['fail']} failed); report {REPORT}"
    )
    for key, v in best.get("params", {}).items():
        console.print(f"  {key}: {_fmt(v)}")


def _recent(
    console: Console, title: str, columns: dict[str, bool], rows: list[list[str]], empty: str
) -> None:
    """A table of the last runs, newest first (`columns`: name -> kept on one line), or `empty`."""
    if not rows:
        console.print(empty)
        return
    table = Table(title=title)
    for col, one_line in columns.items():
        table.add_column(col, no_wrap=one_line)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _at(stamp: str) -> str:
    return stamp[:16].replace("T", " ")


def drift(console: Console, last: int = 5) -> None:
    """The drift monitor's last verdicts (artifacts/monitor/history.jsonl)."""
    from tasks.monitor import history

    rows = []
    for run in reversed(history(last)):
        scores = ", ".join(f"{k} {v:.2f}" for k, v in run["scores"].items() if v is not None)
        verdict = run["verdict"] + (f": {', '.join(run['drifted_checks'])}" if run["drifted_checks"] else "")
        rows.append([_at(run["at"]), run["version"], verdict, str(run["samples"]), scores])
    _recent(
        console,
        "Drift monitor (last runs; scores are score / threshold, 1 or more: drift)",
        {"run at": True, "version": True, "verdict": True, "samples": True, "scores": False},
        rows,
        "Drift monitor: no runs yet (`genloop flow monitor` once the service has served)",
    )


def retrains(console: Console, last: int = 5) -> None:
    """The last retrain runs: why each started and how it ended (artifacts/retrain/history.jsonl)."""
    from tasks.retrain import history

    rows = []
    for run in reversed(history(last)):
        detail = run.get("skipped") or "; ".join(run.get("reasons") or []) or run.get("error") or ""
        trigger = run["trigger"] + (" (forced)" if run.get("force") else "")
        outcome = run["outcome"] + (", deployed" if run.get("deployed") else "")
        rows.append([_at(run["started"]), trigger, outcome, str(run.get("version") or ""), detail])
    _recent(
        console,
        "Retrain (last runs)",
        {"started": True, "trigger": False, "outcome": False, "version": True, "why / reasons": False},
        rows,
        "Retrain: no runs yet (`genloop flow retrain`, or its triggers under `make up`)",
    )


def usage(console: Console) -> dict[str, dict]:
    """Requests and ratings the service recorded, in all and in the last 24 hours; returns the figures
    per model version for the versions table."""
    from service.store import usage as read
    from service.store import usage_of
    from tasks.core import site
    from tasks.core.errors import GenloopError
    from tasks.serving.process import SERVING

    try:
        database = site.current().database
    except GenloopError as err:  # said once already, under Stores
        console.print(f"Service use: [bold red]{err}[/]")
        return {}
    if database:
        from tasks.monitoring.logs import DatabaseLogs

        where = f"{site.redact(database)}, every replica"
        try:
            u = usage_of(DatabaseLogs(database)._query)
        except GenloopError as err:
            console.print(f"Service use: [bold red]{err}[/]")
            return {}
    else:
        where = SERVING / "serving.db"
        if not where.is_file():
            console.print("Service use: no requests recorded yet")
            return {}
        u = read(where)
    console.print(
        f"Service use ({where}): {u['requests']} requests ({u['requests_recent']} in the last 24 h), "
        f"{u['samples']} samples; {u['ratings']} ratings ({u['ratings_recent']} in the last 24 h)"
    )
    return u["per_model"]
