"""The data flow: collect -> validate -> augment, each through its DVC stage."""

from prefect import flow

from tasks.augment import augment_task
from tasks.collect import collect_task
from tasks.feedback import feedback_task
from tasks.share import pull_task, push_task
from tasks.validate import validate_task


@flow(name="data", log_prints=True)
def data(force_collect: bool = False) -> dict:
    """Bring data/processed up to date with the source; stops at the validation gate on bad data."""
    pull_task()  # with site.remote: what another checkout made, so DVC does not make it again
    feedback_task()  # the highly rated served samples, drawn again: collect merges them
    collect_task(force=force_collect)
    validate_task()  # raises on a failing batch: augment never runs
    result = augment_task()
    push_task()
    return result


FLOW = data
