"""The `genloop` command: run one stage, or a Prefect flow, from the project folder."""

from __future__ import annotations

import importlib
import json
import sys
from enum import StrEnum
from typing import Annotated

import typer

import tasks  # noqa: F401  (sets the no-telemetry defaults before anything else starts)
from tasks.errors import GenloopError

app = typer.Typer(
    help="genloop: collect, validate, augment, train, ... a generative model, with DVC and Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class Stage(StrEnum):
    collect = "collect"
    validate = "validate"
    augment = "augment"
    train = "train"
    evaluate = "evaluate"


class FlowName(StrEnum):
    data = "data"
    train = "train"


@app.command()
def stage(
    name: Annotated[Stage, typer.Argument(help="The stage to run (what `dvc.yaml` calls).")],
    params_file: Annotated[str, typer.Option("--params", help="Parameters file.")] = "params.yaml",
) -> None:
    """Run one lifecycle stage with the parameters in params.yaml.

    This runs the stage unconditionally; `dvc repro <name>` runs it only when its inputs changed.
    """
    from tasks.params import load

    params = load(params_file)
    module = importlib.import_module(f"tasks.{name.value}")
    result = module.run(params)
    typer.echo(json.dumps(_brief(result), indent=2, default=str))


@app.command()
def flow(
    name: Annotated[FlowName, typer.Argument(help="The Prefect flow to run locally.")],
    force_collect: Annotated[
        bool, typer.Option(help="Fetch the source again even if nothing changed.")
    ] = False,
) -> None:
    """Run a Prefect flow in this process (its stages run through `dvc repro`).

    With a Prefect server running (`make up`) and PREFECT_API_URL set, the run shows in its UI.
    """
    module = importlib.import_module(f"flows.{name.value}")
    result = module.FLOW(force_collect=force_collect)
    typer.echo(json.dumps(_brief(result), indent=2, default=str))


@app.command()
def status() -> None:
    """The registry: every model version with its label (champion, previous), key metrics and lineage,
    then the champion's model card."""
    from genloop.status import show

    show()


@app.command()
def up(port: Annotated[int, typer.Option(help="Port of the Prefect server (UI and API).")] = 4200) -> None:
    """Start a local Prefect server, a worker and the deployments of prefect.yaml (what `make up` runs)."""
    from genloop.server import up as start

    url = start(port)
    typer.echo(f"Prefect UI: {url}   (export PREFECT_API_URL={url}/api to send `genloop flow` runs there)")


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
