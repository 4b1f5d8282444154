"""The data flow: collect -> validate -> augment, each through its DVC stage."""

from prefect import flow

from tasks.augment import augment_task
from tasks.collect import collect_task
from tasks.feedback import feedback_task
from tasks.validate import validate_task


@flow(name="data", log_prints=True)
def data(force_collect: bool = False) -> dict:
    """Bring data/processed up to date with the source; stops at the validation gate on bad data."""
    feedback_task()  # the highly rated served samples, drawn again: collect merges them
    collect_task(force=force_collect)
    validate_task()  # raises on a failing batch: augment never runs
    return augment_task()


FLOW = data
