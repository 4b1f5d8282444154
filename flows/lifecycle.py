"""The lifecycle flow: every stage in order, collect -> validate -> augment -> tune (when tune.enabled)
-> train -> evaluate -> package -> deploy. Each stage runs through DVC, which skips what is unchanged;
collect retries what the network failed, and nothing retries a failed gate. Its summary (what ran,
what DVC skipped, the metrics, the decision, what is served) is a Prefect artifact and
artifacts/lifecycle/summary.json. `make demo` runs it."""

from prefect import flow

from tasks.augment import augment_task
from tasks.collect import collect_task
from tasks.deploy import serve_task
from tasks.evaluate import evaluate_task
from tasks.feedback import feedback_task
from tasks.lifecycle import before_task, summary_task
from tasks.package import package_task
from tasks.share import pull_task, push_task
from tasks.train import train_task
from tasks.tune import tune_task
from tasks.validate import validate_task


@flow(name="lifecycle", log_prints=True)
def lifecycle(force_collect: bool = False) -> dict:
    """From the source to a served model; a second run with nothing changed runs nothing."""
    pull_task()  # with site.remote: what another checkout made, so DVC does not make it again
    before = before_task()
    feedback_task()
    collect_task(force=force_collect)
    validate_task()  # a bad batch stops here: no model is trained on it
    augment_task()
    tune_task()
    train_task()
    decision = evaluate_task()
    built = package_task()
    push_task()  # with site.remote: every stage's outputs and dvc.lock, for every other checkout
    served = serve_task(built["bento"]) if built["bento"] else None
    return summary_task(before, decision, served)


FLOW = lifecycle
