"""The train flow: bring the data up to date, tune (nothing to do unless tune.enabled), train (resuming a
killed run), then the evaluation gate."""

from prefect import flow

from flows.data import data
from tasks.evaluate import evaluate_task
from tasks.share import push_task
from tasks.train import train_task
from tasks.tune import tune_task


@flow(name="train", log_prints=True)
def train(force_collect: bool = False) -> dict:
    """data flow (collect -> validate -> augment), tune, train, evaluate (register, promote or reject)."""
    data(force_collect=force_collect)
    tune_task()  # train reads its best_params.yaml (with train.use_tuned), so it must be up to date
    metrics = train_task()
    result = {"train": metrics, "evaluate": evaluate_task()}
    push_task()  # with site.remote: the model and its evaluation, for every other checkout
    return result


FLOW = train
