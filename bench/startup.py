"""What a stage costs before its own work, and a cached lifecycle flow, beside Metaflow's 5-step no-op run.

A stage's fixed cost is the wall time of `genloop stage <name>` minus the stage's own work, measured as
its `run(params)` called a second time in one process (its libraries imported, the same inputs). It is
measured with each stage importing its libraries (GENLOOP_RUNNER=0) and through the warm runner
(genloop/runner.py), the default. The cached lifecycle is `genloop flow lifecycle` against a running
Prefect server with everything up to date and the champion served; the reference is `python noop.py
run` of a Metaflow flow of five steps that do nothing (start, a, b, c, end; local datastore). All in
one project made here (this project's code, `git init`, a briefly trained digits VAE), alternating
the variants N times and printing medians.
Targets: a stage's fixed cost <= 2 s; the cached lifecycle <= 1.5x the Metaflow run.

    python bench/startup.py           # 3 rounds
    python bench/startup.py -n 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scaling import project, set_params  # noqa: E402

BIN = Path(sys.executable).parent
STAGES = ["feedback", "collect", "validate", "augment", "tune", "train", "evaluate", "package"]
WORK = """
import sys, time
from tasks.core.params import load
import importlib
stage = importlib.import_module("tasks." + sys.argv[1])
params = load()
stage.run(params)
start = time.perf_counter()
stage.run(params)
print("WORK", time.perf_counter() - start)
"""
NOOP_FLOW = """
from metaflow import FlowSpec, step


class Noop(FlowSpec):
    @step
    def start(self):
        self.next(self.a)

    @step
    def a(self):
        self.next(self.b)

    @step
    def b(self):
        self.next(self.c)

    @step
    def c(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    Noop()
"""


def timed(cmd: list[str], cwd: Path, env: dict, cached: bool = False) -> tuple[float, str]:
    """Wall time and output of a command; with `cached`, a flow that must have run no stage."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    if cached and "Running stage" in proc.stdout + proc.stderr:
        sys.exit(f"{' '.join(cmd)} ran a stage: the pipeline was not up to date\n{proc.stdout[-3000:]}")
    return elapsed, proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=3, help="rounds of each (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the project (printed folder)")
    a = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="genloop-startup-"))
    root = work / "project"
    quiet = {"DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true",
             "GX_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    env = {**os.environ, **quiet, "BENTOML_HOME": str(root / ".genloop/bentoml")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("GENLOOP_RUNNER", None)
    cold = env | {"GENLOOP_RUNNER": "0"}
    genloop = str(BIN / "genloop")
    from prefect.server.api.server import SubprocessASGIServer

    server = None
    try:
        project(root)
        baseline = {"gmm_components": [1], "gmm_reg_covar": [0.01], "ngram_max_order": 5}
        set_params(root, train={"max_steps": 200, "sample_every_n_epochs": 0}, serve={"port": free_port()},
                   evaluate={"image_draws": 1, "baseline": baseline})  # fmt: skip
        os.environ.update(quiet)
        server = SubprocessASGIServer()
        server.start()
        env["PREFECT_API_URL"] = cold["PREFECT_API_URL"] = server.api_url
        print(f"preparing {root}: the lifecycle once (trains, evaluates, packages, serves) ...", flush=True)
        timed([genloop, "flow", "lifecycle"], root, env)
        timed([genloop, "runner", "start"], root, env)
        (work / "noop.py").write_text(NOOP_FLOW)
        mf_env = env | {"METAFLOW_USER": "bench", "METAFLOW_HOME": str(work / "metaflow")}
        metaflow = [sys.executable, str(work / "noop.py"), "--no-pylint", "run"]
        timed(metaflow, work, mf_env)  # untimed: its first run creates the datastore

        results: dict[str, list[float]] = {}

        def note(key: str, value: float) -> None:
            results.setdefault(key, []).append(value)

        for i in range(a.runs):
            print(f"round {i + 1} of {a.runs} ...", flush=True)
            for stage in STAGES:
                note(f"{stage} cold", timed([genloop, "stage", stage], root, cold)[0])
                note(f"{stage} warm", timed([genloop, "stage", stage], root, env)[0])
                out = timed([sys.executable, "-c", WORK, stage], root, env)[1]
                note(f"{stage} work", float(out.split("WORK")[-1]))
            # the stages run by hand rewrote outputs (the gate's decision says "keep" now): an untimed
            # flow brings everything up to date again, so that the timed ones find nothing to do
            timed([genloop, "flow", "lifecycle"], root, env)
            note("metaflow", timed(metaflow, work, mf_env)[0])
            note("lifecycle", timed([genloop, "flow", "lifecycle"], root, env, cached=True)[0])
            note("lifecycle, no runner", timed([genloop, "flow", "lifecycle"], root, cold, cached=True)[0])
    finally:
        subprocess.run([genloop, "undeploy"], cwd=root, env=env, capture_output=True)
        if server is not None:
            server.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    report({k: statistics.median(v) for k, v in results.items()}, a.runs)


def report(m: dict[str, float], runs: int) -> None:
    print(f"\nmedians of {runs} rounds, seconds")
    print(f"{'stage':10}{'command':>10}{'work':>8}{'fixed, no runner':>18}{'fixed, warm runner':>20}")
    worst = 0.0
    for stage in STAGES:
        work = m[f"{stage} work"]
        cold, warm = m[f"{stage} cold"] - work, m[f"{stage} warm"] - work
        worst = max(worst, warm)
        print(f"{stage:10}{m[f'{stage} warm']:10.2f}{work:8.2f}{cold:18.2f}{warm:20.2f}")
    print(f"a stage's fixed cost, warm runner: at most {worst:.2f} s (target <= 2 s): "
          f"{'met' if worst <= 2 else 'NOT met'}")  # fmt: skip
    ratio = m["lifecycle"] / m["metaflow"]
    met = "met" if ratio <= 1.5 else "NOT met"
    print(f"Metaflow, 5 no-op steps       {m['metaflow']:6.2f} s")
    print(f"genloop flow lifecycle, cached{m['lifecycle']:6.2f} s  ({ratio:.2f}x; target <= 1.5x: {met})")
    print(f"  the same without the runner {m['lifecycle, no runner']:6.2f} s")


if __name__ == "__main__":
    main()
