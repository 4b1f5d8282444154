"""The monitor flow: one window of what the service served, judged against the champion's reference
(tasks/monitor.py). On drift it emits the Prefect event genloop.drift.detected; when enough ratings came
in since the last retrain, genloop.feedback.ready (tasks/retrain.py). The retrain deployment listens to
both."""

from prefect import flow

from tasks.monitor import monitor_task
from tasks.retrain import feedback_task


@flow(name="monitor", log_prints=True)
def monitor() -> dict:
    """Input, request, output and rating drift for the current window: report, decision, history."""
    decision = monitor_task()
    print(f"drift monitor: {decision['verdict']} ({decision['folder']}/report.html)")
    due = feedback_task()
    if due:
        print(f"feedback: {due['ratings']} new ratings since the last retrain: genloop.feedback.ready sent")
    return decision


FLOW = monitor
