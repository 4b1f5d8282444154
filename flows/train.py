"""The train flow: bring the data up to date, then train (resuming a killed run)."""

from prefect import flow

from flows.data import data
from tasks.train import train_task


@flow(name="train", log_prints=True)
def train(force_collect: bool = False) -> dict:
    """data flow (collect -> validate -> augment), then the train stage, each through DVC."""
    data(force_collect=force_collect)
    return train_task()


FLOW = train
