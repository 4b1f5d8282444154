"""Prefect pull steps of prefect.yaml: where a deployment's flow run works.

The worker `genloop up` starts works in the project folder itself. A worker started with `genloop worker`
has a folder of its own and no checkout: there the run clones the repository at the commit that was
deployed (Prefect's `git_clone`, which reuses the checkout the next time and moves it to the commit),
and the flow's first task pulls the data and outputs the site's DVC remote holds (tasks/share.py).
"""

from __future__ import annotations

import os
from pathlib import Path

WORKER_HOME = "GENLOOP_WORKER_HOME"  # set by `genloop worker`: the folder its checkouts live in


def checkout(repository: str, commit: str, project: str) -> dict[str, str]:
    """Change to the folder the flow run works in and return it as {"directory": ...}. Its code comes
    first on PYTHONPATH, so the stages this run starts (`genloop stage ...` through DVC) import the
    checkout's code, not that of the genloop installed on the worker."""
    repository, commit = (v if v and not v.startswith("{{") else "" for v in (repository, commit))
    home = os.environ.get(WORKER_HOME)
    if not home:
        os.chdir(project)
        return {"directory": _first_on_path(project)}
    if not repository or not commit:
        raise ValueError("this deployment names no repository and commit: deploy it again with `genloop up`")
    from prefect.deployments.steps import git_clone

    Path(home).mkdir(parents=True, exist_ok=True)
    os.chdir(home)
    cloned = git_clone(repository=repository, commit_sha=commit)
    directory = str((Path(home) / cloned["directory"]).resolve())
    os.chdir(directory)
    return {"directory": _first_on_path(directory)}


def _first_on_path(directory: str) -> str:
    rest = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = directory + (os.pathsep + rest if rest else "")
    return directory
