"""What does Prefect cost on top of DVC? The lifecycle flow with everything cached, beside the same
stages run with `dvc repro --single-item` directly, in one run.

Run from a project whose pipeline has run (`make demo`): it brings the pipeline up to date once
(untimed; the lifecycle flow's first run also serves the champion if nothing is served), starts a
Prefect server (timed: the server's start-up, paid once per `make up` or per temporary server), then
alternates, N times each:
- the stages alone: `dvc repro --single-item <stage>` for each stage the flow runs, in its order
  (feedback with --force, as the flow runs it), one process each;
- the flow: `lifecycle()` in a fresh process against that server (timed inside the process, from the
  call to its return; the process's start and imports are reported apart).
Prints medians, and Prefect's cost per task: (flow - stages) / tasks of the flow run (the stages'
tasks plus the flow's own: the lock snapshot, the deploy check and the summary). Target: <= 100 ms a
task once the server is up.

    python bench/flow_overhead.py            # 5 rounds
    python bench/flow_overhead.py -n 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["feedback", "collect", "validate", "augment", "tune", "train", "evaluate", "package"]
OWN_TASKS = 3  # the lifecycle flow's tasks beside the stages: before, serve (already served), summary
FLOW = """
import json, time
t0 = time.perf_counter()
from flows.lifecycle import lifecycle
t1 = time.perf_counter()
lifecycle()
t2 = time.perf_counter()
print("TIMES " + json.dumps({"imports": t1 - t0, "flow": t2 - t1}))
"""


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def stages(env: dict) -> float:
    """The flow's stages through DVC alone, one process each, as the flow's tasks run them."""
    total = 0.0
    for stage in STAGES:
        force = ["--force"] if stage == "feedback" else []
        total += timed([sys.executable, "-m", "dvc", "repro", "--single-item", stage, *force], env)
    return total


def flow(env: dict) -> dict:
    """The lifecycle flow in a fresh process: its process time, and its own timing of imports and run."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", FLOW], capture_output=True, text=True, env=env, cwd=ROOT)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"the lifecycle flow failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines()[::-1] if x.startswith("TIMES "))
    ran = [x for x in proc.stdout.splitlines() if "Running stage" in x]
    if ran:
        sys.exit(f"the pipeline is not cached: the flow ran {ran}")
    return json.loads(line.removeprefix("TIMES ")) | {"process": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=5, help="rounds of each (default 5)")
    a = parser.parse_args()
    os.chdir(ROOT)
    if not Path("dvc.lock").is_file():
        sys.exit("run the pipeline first (make demo), so that the bench measures a cached one")
    from prefect.server.api.server import SubprocessASGIServer

    os.environ |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}  # the server too
    env = dict(os.environ)
    start = time.perf_counter()
    server = SubprocessASGIServer()
    server.start()
    startup = time.perf_counter() - start
    env["PREFECT_API_URL"] = server.api_url
    try:
        flow(env)  # untimed: the pipeline up to date, the champion served, the server warm
        plain, flows = [], []
        for _ in range(a.runs):  # alternate, so that drift on the machine falls on both alike
            plain.append(stages(env))
            flows.append(flow(env))
    finally:
        server.stop()
    tasks = len(STAGES) + OWN_TASKS
    p = statistics.median(plain)
    f = statistics.median(r["flow"] for r in flows)
    imports = statistics.median(r["imports"] for r in flows)
    process = statistics.median(r["process"] for r in flows)
    per_task = (f - p) / tasks
    print(f"Prefect server start-up                    {startup:7.2f} s (once per server)")
    print(f"stages through dvc repro --single-item     {p:7.2f} s median of {a.runs} ({len(STAGES)} stages)")
    print(f"lifecycle flow, cached (from its call)     {f:7.2f} s median of {a.runs} ({tasks} tasks)")
    print(f"  its process in all (start, imports)      {process:7.2f} s (imports {imports:.2f} s)")
    print(f"Prefect's cost a task beyond DVC's         {per_task * 1000:7.0f} ms (target <= 100 ms)")


if __name__ == "__main__":
    main()
