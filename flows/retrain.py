"""The retrain flow: the loop closing by itself, inside the guardrails of params `retrain`.

Collect the source again, then validate, augment, tune, train and evaluate through DVC; when the gate
promotes, package and deploy (health-checked; a failed deploy puts the previous champion back). Every
run's trigger and outcome go to artifacts/retrain/history.jsonl and a Prefect artifact (tasks/retrain.py).
Triggers (prefect.yaml): a weekly schedule, the monitor's genloop.drift.detected, genloop.feedback.ready,
or a person (the default).
"""

from prefect import flow

from tasks.augment import augment_task
from tasks.collect import collect_task
from tasks.deploy import deploy_task
from tasks.evaluate import evaluate_task
from tasks.feedback import feedback_task
from tasks.package import package_task
from tasks.retrain import begin_task, ended, finish_task, keep_champion_task, new_data_task
from tasks.share import pull_task, push_task
from tasks.train import train_task
from tasks.tune import tune_task
from tasks.validate import validate_task


@flow(name="retrain", log_prints=True)
def retrain(trigger: str = "person", detail: dict | None = None, force: bool = False) -> dict:
    """trigger: schedule, drift, feedback or person; detail: what the trigger saw (a drift event's
    scores); force: a person's run past the guardrails."""
    record = begin_task(trigger, detail, force)
    if record["skipped"]:
        return ended(finish_task(record, "skipped"))
    try:
        pull_task()  # with site.remote: what another checkout made
        feedback_task()  # rated samples drawn again, merged by collect within max_synthetic_share
        collect_task(force=True)
        record = new_data_task(record)
        if record["skipped"]:
            return ended(finish_task(record, "skipped"))
        validate_task()  # a bad batch stops here: nothing is trained on it
        augment_task()
        tune_task()
        train_task()
        decision = evaluate_task()
        version = decision["challenger"]
        if decision["decision"] != "promote":
            push_task()  # with site.remote: the model and its evaluation, for every other checkout
            return ended(finish_task(record, "rejected", version=version, reasons=decision["reasons"]))
        if version == record["champion_before"]:
            push_task()
            same = ["the model did not change"]
            return ended(finish_task(record, "unchanged", version=version, reasons=same))
        try:
            built = package_task()
            deployed = deploy_task(built["bento"])
        except Exception:
            keep_champion_task(version)
            raise
        push_task()  # after the deploy: a remote that fails here leaves the new champion served
        return ended(finish_task(record, "promoted", version=version, deployed=deployed["bento"]))
    except Exception as err:
        finish_task(record, "failed", error=str(err).splitlines()[0][:300] if str(err) else repr(err))
        raise


FLOW = retrain
