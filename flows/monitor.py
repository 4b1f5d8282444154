"""The monitor flow: one window of what the service served, judged against the champion's reference
(tasks/monitor.py). On drift it emits the Prefect event genloop.drift.detected."""

from prefect import flow

from tasks.monitor import monitor_task


@flow(name="monitor", log_prints=True)
def monitor() -> dict:
    """Input, request, output and rating drift for the current window: report, decision, history."""
    decision = monitor_task()
    print(f"drift monitor: {decision['verdict']} ({decision['folder']}/report.html)")
    return decision


FLOW = monitor
