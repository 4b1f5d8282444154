"""train: fit the model family of params.yaml on data/processed with Lightning; export safetensors.

Outputs in artifacts/train/: checkpoints/ (last + best; a killed run resumes from last), model/
(model.safetensors + model.json, what later stages load, and training.json, what it was trained with),
samples/ (grids or texts every N epochs), live/ (dvclive metrics: `dvc plots show`), metrics.json.
The training itself lives in tasks/training/.
"""

from __future__ import annotations

from tasks.core import paths
from tasks.core.errors import GenloopError
from tasks.core.orchestration import publish_table, repro, task
from tasks.core.params import Params
from tasks.core.storage import read_json


def run(params: Params) -> dict:
    from tasks.core.params import family_train
    from tasks.training.fit import fit

    tuned = None
    if params.require("train").use_tuned:
        params, tuned = apply_tuned(params)
    tuned_keys = {k.removeprefix("train.") for k in (tuned or {}).get("values", {})}
    own = {k: v for k, v in family_train(params).items() if k not in tuned_keys}
    if own:  # the train section's value of these keys is not the one used: say so
        family = params.require("model").family
        print(f"model.{family}.train sets " + ", ".join(f"{k} {v}" for k, v in own.items()), flush=True)
    return fit(params.require("model"), params.require("train"), tuned=tuned)


def launch(params: Params, nodes: int, rdzv: str, per_node: int = 1, rdzv_id: str | None = None) -> dict:
    """This machine's part of a DDP run over `nodes` machines through torchrun's rendezvous at `rdzv`
    (host:port; the same on every machine), `per_node` processes here. Rank 0 alone decides whether to
    resume (and hands its checkpoint to the others) and exports the model; on its machine, this then
    records the stage in dvc.lock (`dvc commit`) and pushes to the site's remote, as `dvc repro` would."""
    import os
    import subprocess
    import sys
    import uuid

    from tasks.core import remote, site
    from tasks.core.params import line
    from tasks.training.fit import EXPORTED, LAUNCH

    if site.current().remote:  # what other machines made, so that this one makes none of it again
        remote.pull(line(params))
    # the stages train depends on, up to date on every machine (DVC skips what is): each needs the data
    if before := upstream("train"):
        subprocess.run([sys.executable, "-m", "dvc", "repro", *before], check=True)
    name = uuid.uuid4().hex
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv, "--rdzv-id", rdzv_id or line(params)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node",
           str(per_node), *rendezvous, "-m", "genloop.cli", "stage", "train"]  # fmt: skip
    code = subprocess.run(cmd, env={**os.environ, LAUNCH: name}).returncode
    if code:
        raise GenloopError(f"train: torchrun exited with {code} (see the ranks' output above)")
    if not (EXPORTED.is_file() and EXPORTED.read_text() == name):
        return {"exported": False}  # another machine's rank 0 exported
    subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "train"], check=True)
    if site.current().remote:
        remote.push(line(params))
    return {"exported": True, "metrics": read_json(paths.TRAIN_METRICS)}


def upstream(stage: str) -> list[str]:
    """The stages `stage` depends on, directly or not, in dvc.yaml."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(".") as repo:
        graph = repo.index.graph
        (node,) = [s for s in graph.nodes if getattr(s, "name", None) == stage]
        return sorted(s.name for s in nx.descendants(graph, node))


def apply_tuned(params: Params) -> tuple[Params, dict]:
    """params.yaml with the tune stage's best values over it, and the record of which came from where."""
    from tasks.core.params import with_values
    from tasks.core.paths import TUNED
    from tasks.core.space import active, read_tuned

    best = read_tuned()
    if not best.get("params"):
        raise GenloopError(
            f"train.use_tuned is true but {TUNED} holds no tuned values: set tune.enabled: true and run "
            "the tune stage (dvc repro tune), or set train.use_tuned: false"
        )
    family = params.require("model").family
    values = active(best["params"], family)  # a study of another family tuned nothing of this one
    tuned = {k: best[k] for k in ("study", "trial", "value", "unit") if k in best} | {"values": values}
    return with_values(params, values, str(TUNED)), tuned


@task(name="train")
def train_task() -> dict:
    """Run the DVC stage `train` (resumes a killed run) and show its metrics in the Prefect UI."""
    repro("train")  # the task imports nothing of training: a cached stage costs what DVC's check does
    metrics = read_json(paths.TRAIN_METRICS)
    publish_table("train", [{"metric": k, "value": str(v)} for k, v in metrics.items()], "Training result")
    return metrics
