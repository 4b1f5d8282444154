"""The `genloop` command: run one stage, or a Prefect flow, from the project folder."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from enum import StrEnum
from typing import Annotated

import typer

import tasks  # noqa: F401  (sets the no-telemetry defaults before anything else starts)
from tasks.core.errors import GenloopError

app = typer.Typer(
    help="genloop: collect, validate, augment, train, ... a generative model, with DVC and Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(show: bool) -> None:
    if show:
        from genloop import __version__

        typer.echo(f"genloop {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """genloop: collect, validate, augment, tune, train, evaluate, package and deploy a generative model, with
    DVC (what changed reruns) and Prefect (schedules, retries, a UI)."""


class Stage(StrEnum):
    feedback = "feedback"
    collect = "collect"
    validate = "validate"
    augment = "augment"
    tune = "tune"
    train = "train"
    evaluate = "evaluate"
    package = "package"


class FlowName(StrEnum):
    data = "data"
    tune = "tune"
    train = "train"
    deploy = "deploy"
    monitor = "monitor"
    retrain = "retrain"
    lifecycle = "lifecycle"


@app.command()
def stage(
    name: Annotated[Stage, typer.Argument(help="The stage to run (what `dvc.yaml` calls).")],
    params_file: Annotated[str, typer.Option("--params", help="Parameters file.")] = "params.yaml",
) -> None:
    """Run one lifecycle stage with the parameters in params.yaml.

    This runs the stage unconditionally; `dvc repro <name>` runs it only when its inputs changed.
    """
    from models import cores
    from tasks.core.params import Recording, load

    params = load(params_file)
    cores.claim(f"stage {name.value}", params_file)  # before the stage imports its math libraries
    module = importlib.import_module(f"tasks.{name.value}")
    log = os.environ.get("GENLOOP_PARAMS_LOG")  # note which params the stage reads (tests/test_pipeline.py)
    if log:
        params = Recording(params)
    try:
        result = module.run(params)
    finally:
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"stage": name.value, "read": params.read()}) + "\n")
    typer.echo(json.dumps(_brief(result), indent=2, default=str))


@app.command()
def flow(
    name: Annotated[FlowName, typer.Argument(help="The Prefect flow to run locally.")],
    force_collect: Annotated[
        bool, typer.Option(help="Fetch the source again even if nothing changed.")
    ] = False,
    force: Annotated[
        bool, typer.Option(help="retrain: run past the guardrails (cooldown, daily cap, new data).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the flow's whole result as JSON.")] = False,
) -> None:
    """Run a Prefect flow in this process (its stages run through `dvc repro`).

    With a Prefect server running (`make up`) and PREFECT_API_URL set, the run shows in its UI.
    `genloop flow retrain` is recorded as started by a person (artifacts/retrain/history.jsonl).
    """
    from tasks.core.params import load

    params = load()  # a misspelt key is told in a second, before Prefect or a server starts
    module = importlib.import_module(f"flows.{name.value}")
    with _heartbeat_unless_configured():
        if name is FlowName.retrain:
            result = module.FLOW(trigger="person", force=force)
        elif name in (FlowName.deploy, FlowName.monitor):
            result = module.FLOW()
        else:
            result = module.FLOW(force_collect=force_collect)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        from genloop.report import lines

        typer.echo("\n".join(lines(name.value, _brief(result), params)))


def _heartbeat_unless_configured() -> contextlib.AbstractContextManager:
    """No Prefect heartbeat for a run from the command line, unless a setting asks for one (the
    environment, a profile, prefect.toml). Its thread sleeps in whole seconds, and the run waits for it
    to wake at its end (0.5 s on average, a tenth of a cached lifecycle); and nothing watches it:
    `genloop up`'s crash automation watches its deployments' runs, which set their own."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        return contextlib.nullcontext()
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


tune_app = typer.Typer(help="The tuning study: its dashboard, and workers joining it.", no_args_is_help=True)
app.add_typer(tune_app, name="tune")


@tune_app.command("worker")
def tune_worker(
    params_file: Annotated[str, typer.Option("--params", help="Parameters file.")] = "params.yaml",
    study: Annotated[str | None, typer.Option(help="Study name (default: what tune.study gives).")] = None,
) -> None:
    """Run trials of the study until it has had tune.n_trials (on another machine: with tune.storage a
    PostgreSQL URL, in a checkout of the same project and data)."""
    from models import cores
    from tasks.core.params import load
    from tasks.tuning.study import work

    params = load(params_file)
    if not params.require("tune").enabled:
        raise GenloopError("tune.enabled is false in params.yaml: set it to true to run trials")
    cores.claim("tune worker", params_file)
    ran = work(params, study, progress=True)
    typer.echo(f"this worker ran {ran} trials")


@tune_app.command("dashboard")
def tune_dashboard(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Open the study's storage (tune.storage) in optuna-dashboard, at http://127.0.0.1:8080."""
    from optuna_dashboard import run_server

    from tasks.core.params import load
    from tasks.tuning.study import JOURNAL, open_storage

    tune = load().require("tune")
    if tune.storage == "journal" and not JOURNAL.is_file():
        raise GenloopError(f"no study yet ({JOURNAL} is missing): run `genloop stage tune` first")
    typer.echo(f"optuna-dashboard: http://{host}:{port}  (Ctrl+C stops)")
    run_server(open_storage(tune.storage), host=host, port=port)


runner_app = typer.Typer(
    help="The warm runner: a process that has loaded the stages' and flows' libraries and forks each "
    "`genloop stage` and `genloop flow` (genloop/runner.py; GENLOOP_RUNNER=0 turns it off).",
    no_args_is_help=True,
)
app.add_typer(runner_app, name="runner")


@runner_app.command("start")
def runner_start() -> None:
    """Start the runner for this environment now (the first stage or flow otherwise starts it)."""
    from genloop import runner

    if not runner.enabled():
        raise GenloopError("the runner is off here (GENLOOP_RUNNER=0, or not Linux)")
    r = runner.start_and_wait()
    typer.echo(f"runner {r['fingerprint']} ready: pid {r['pid']}")


@runner_app.command("stop")
def runner_stop() -> None:
    """Stop this user's runners; stages and flows they are running go on to their end."""
    from genloop import runner

    stopped = runner.stop()
    typer.echo(
        f"stopped {len(stopped)} runner(s)" + (f": pid {', '.join(map(str, stopped))}" if stopped else "")
    )


site_app = typer.Typer(
    help="Where a team's shared state lives: the site section of params.yaml (site.remote on S3, "
    "site.database on PostgreSQL); `genloop status` names the stores in use.",
    no_args_is_help=True,
)
app.add_typer(site_app, name="site")


@site_app.command("migrate")
def site_migrate() -> None:
    """Copy this machine's registry, champion record, service log and stage outputs into the site's
    shared stores (run it again at will: what is there already is kept)."""
    from tasks.share import migrate

    done = migrate()
    typer.echo(f"shared: {len(done['versions'])} version(s), {len(done['bentos'])} Bento(s) exported")
    typer.echo(f"champion record: {len(done['lines'])} line(s) moved to site.database")
    if done.get("log"):
        rows = ", ".join(f"{n} {table}" for table, n in done["log"].items())
        typer.echo(f"service log: {rows} row(s) copied to site.database (rows already there are not copied)")
    for name in done["kept"]:
        typer.echo(f"  kept {name} as site.database has it: it already holds another history of that line")
    if done.get("dvc", {}).get("pushed"):
        lock = "and dvc.lock " if done["dvc"].get("lock") else "(the line's shared dvc.lock kept as it was) "
        typer.echo(f"stage outputs {lock}pushed to the DVC remote")


@app.command()
def serve(
    model: Annotated[str | None, typer.Option(help="Model version (default: the champion).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port in params.yaml).")] = None,
) -> None:
    """Run the service in the foreground from the source in service/ (for development; Ctrl+C stops).

    `genloop deploy` runs the packaged Bento in the background instead.
    """
    from tasks import package
    from tasks.core.params import line, load
    from tasks.registry import champions, store
    from tasks.serving.process import SERVING

    params = load()
    model = model or champions.champion(store.name_of(line(params)))
    if model is None:
        raise GenloopError("no champion yet: run evaluate first, or pass --model")
    serve_params = params.require("serve")
    args = [f"--arg={k}={v}" for k, v in package.settings(params, model).items()]
    os.environ["GENLOOP_SERVING_DIR"] = str(SERVING.resolve())
    from tasks.core import site

    os.environ.update(site.current().variables())  # the log in site.database, as a deployment's
    address = ["--host", serve_params.host, "--port", str(port or serve_params.port)]
    launch = [sys.executable, "-m", "tasks.serving.launch"]  # bentoml serve, no control port on TCP
    os.execv(sys.executable, [*launch, "serve", "service.service:Genloop", *address, *args])


@app.command()
def train(
    nodes: Annotated[int, typer.Option(min=1, help="Machines in the run, this one included.")] = 1,
    rdzv: Annotated[str, typer.Option(help="host:port of the rendezvous, the same on every machine.")] = (
        "127.0.0.1:29400"
    ),
    per_node: Annotated[int, typer.Option(min=1, help="Processes here (one per GPU).")] = 1,
    rdzv_id: Annotated[str | None, typer.Option(help="The run's id (default: the model line).")] = None,
) -> None:
    """Train across machines: run this on each of NODES machines; torchrun's rendezvous makes them one
    DDP run with params.yaml as it is. Rank 0 alone decides whether to resume and exports the model;
    its machine records the stage in dvc.lock. With --nodes 1 it is `genloop stage train` on DDP."""
    from tasks.core.params import load
    from tasks.train import launch

    result = launch(load(), nodes, rdzv, per_node, rdzv_id)
    typer.echo("this machine exported the model and recorded it in dvc.lock" if result["exported"]
               else "another machine's rank 0 exported the model")  # fmt: skip


@app.command()
def package(
    cluster: Annotated[
        str | None,
        typer.Option(help="Also write the image recipe and Kubernetes manifests into this folder."),
    ] = None,
) -> None:
    """Build (or find) the champion's Bento, as the package stage does. With --cluster DIR, also write
    what a cluster runs it with: DIR/Containerfile (BentoML's, its pins checked against
    requirements.lock), DIR/kubernetes.yaml (Deployment, Service) and DIR/secret.yaml (GENLOOP_API_KEY;
    mode 0600, keep it out of git)."""
    from tasks.core.params import load
    from tasks.package import build

    params = load()
    built = build(params, record=False)
    typer.echo(f"bento {built['bento']} ({built['model']})")
    if cluster:
        from pathlib import Path

        from tasks.serving.cluster import write

        written = write(params, built["bento"], Path(cluster))
        for what in ("containerfile", "kubernetes", "secret"):
            typer.echo(f"  {what}: {written[what]}")
        image = f"{params.require('package').cluster.image}:{built['bento'].split(':')[1]}"
        typer.echo(
            f"  build the image: docker build -f {written['containerfile']} -t {image} {written['context']}"
        )
        typer.echo(f"  then: kubectl apply -f {written['secret']} -f {written['kubernetes']}")


@app.command()
def deploy(
    bento: Annotated[str | None, typer.Option(help="Bento tag (default: what `package` built).")] = None,
) -> None:
    """Serve the packaged Bento in the background: health-checked, smoke-tested, rolled back on failure."""
    from tasks.core.params import load
    from tasks.deploy import deploy as run_deploy

    record = run_deploy(load(), bento)
    typer.echo(f"serving {record['bento']} ({record['model']}) at {record['url']}  (pid {record['pid']})")
    typer.echo(f"  page: {record['url']}/ui   log: {record['log']}")


@app.command()
def rollback() -> None:
    """Return to the previous champion: relabel it, package it, deploy it."""
    from tasks.core.params import load
    from tasks.deploy import rollback as run_rollback

    record = run_rollback(load())
    typer.echo(f"rolled back: serving {record['bento']} ({record['model']}) at {record['url']}")


@app.command()
def undeploy() -> None:
    """Stop the deployed service: requests in flight finish first."""
    from tasks.deploy import undeploy as stop

    record = stop()
    if record is None:
        typer.echo("nothing was deployed")
    elif not record["running"]:
        typer.echo(f"{record['bento']} was not running (its process is gone); its record is removed")
    else:
        typer.echo(f"stopped {record['bento']} (was at {record['url']})")


@app.command()
def status() -> None:
    """What is deployed (URL, since when, lineage), every model version in the registry with its label
    (champion, previous), key metrics and lineage, then the champion's model card."""
    from genloop.status import show

    show()


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Port of the Prefect server (UI and API).")] = 4200,
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on; other than loopback only with PREFECT_SERVER_API_AUTH_STRING."
        ),
    ] = "127.0.0.1",
    worker: Annotated[bool, typer.Option(help="Start a worker in this folder too.")] = True,
) -> None:
    """Start a local Prefect server, a worker and the deployments of prefect.yaml (what `make up` runs)."""
    from genloop.server import deployed_code, uncommitted
    from genloop.server import up as start

    url = start(port, host, worker)
    typer.echo(f"Prefect UI: {url}   (export PREFECT_API_URL={url}/api to send `genloop flow` runs there)")
    repository, commit = deployed_code()
    if commit:
        typer.echo(f"workers elsewhere (genloop worker) run commit {commit[:12]} of {repository}")
        if uncommitted():
            typer.echo("  (this folder has uncommitted changes: those workers do not see them; commit, push,"
                       " and run `genloop up` again)")  # fmt: skip


@app.command()
def worker(
    api: Annotated[str, typer.Option(envvar="PREFECT_API_URL", help="The Prefect server's URL.")],
    folder: Annotated[str, typer.Option(help="Where this worker's checkouts live.")] = "genloop-worker",
    pool: Annotated[str, typer.Option(help="The work pool.")] = "genloop",
    name: Annotated[str | None, typer.Option(help="The worker's name in the UI.")] = None,
    limit: Annotated[
        int, typer.Option(min=1, help="Flow runs at a time (1: the checkout's stages serial).")
    ] = 1,
) -> None:
    """Run a worker of the pool here, until stopped: on this or another machine, with no checkout. Its
    flow runs clone the deployed commit into FOLDER and pull the site's data there. Set
    PREFECT_API_AUTH_STRING when the server has auth, and the site's GENLOOP_SITE_REMOTE/_DATABASE."""
    from pathlib import Path

    from genloop.server import worker as become

    become(api, Path(folder), pool, name, limit)


@app.command()
def down() -> None:
    """Stop the worker and the Prefect server started by `genloop up` (what `make down` runs)."""
    from genloop.server import down as stop

    stopped = stop()
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def _brief(result: object) -> object:
    """Summaries for the terminal: long lists (vocabularies, file lists) are shortened."""
    if isinstance(result, dict):
        return {k: _brief(v) for k, v in result.items()}
    if isinstance(result, list) and len(result) > 12:
        return [*result[:12], f"... {len(result) - 12} more"]
    return result


def main() -> None:
    try:
        app()
    except GenloopError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
