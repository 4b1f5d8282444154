"""The train flow: bring the data up to date, train (resuming a killed run), then the evaluation gate."""

from prefect import flow

from flows.data import data
from tasks.evaluate import evaluate_task
from tasks.train import train_task


@flow(name="train", log_prints=True)
def train(force_collect: bool = False) -> dict:
    """data flow (collect -> validate -> augment), train, evaluate (register, promote or reject)."""
    data(force_collect=force_collect)
    metrics = train_task()
    return {"train": metrics, "evaluate": evaluate_task()}


FLOW = train
