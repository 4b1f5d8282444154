"""One machine shared: the default digits VAE's training alone, beside a second training, and beside the
service under a steady load, with the plan for the cores (models/cores.py) and without it, in one run.

Without the plan every process takes every core (GENLOOP_THREADS = the machine's cores), as genloop
did before it; with the plan each process doing math takes an equal share, updated as others start
and end. Two projects (this project's code, `git init`) are prepared once: the digits collected,
validated and augmented, and one briefly trained model registered to serve. Then, for each setting:
- training alone: `genloop stage train` (train.max_steps = --steps), its training time as it reports it;
- two trainings started together, one in each project: each one's time;
- the service (`bentoml serve` of service/, the registered model) under an open-loop load of --rate
  one-sample requests a second: alone (--seconds, half before a training and half after it) and while
  a training runs beside it: its requests/s and p99 latency in each, and the training's time.
The ledger of the plan is a fresh folder, so nothing else on the machine takes part.
Targets, with the plan: a training beside one other process takes at most 2.2x its time alone, and
the service's p99 beside a training is at most 2x its p99 alone.

    python bench/sharing.py                    # 1,000 training steps, 50 requests/s
    python bench/sharing.py --steps 4000       # the default budget
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scaling import project, set_params  # noqa: E402
from bench.serve import Server  # noqa: E402
from models.cores import machine_cores  # noqa: E402

BIN = Path(sys.executable).parent


def run(root: Path, *cmd: str, env: dict) -> str:
    proc = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {root}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def train(root: Path, env: dict) -> subprocess.Popen:
    cmd = [str(BIN / "genloop"), "stage", "train"]
    out, err = subprocess.PIPE, subprocess.DEVNULL
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=err, text=True)


def seconds(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"training failed:\n{out[-2000:]}")
    return float(json.loads(out[out.index("{") :])["seconds"])


def prepare(work: Path, steps: int, env: dict) -> tuple[Path, Path, str]:
    """Two projects after the data stages, and a model registered in the first (to serve)."""
    a = work / "a"
    project(a)
    baseline = {"gmm_components": [1], "gmm_reg_covar": [0.01], "ngram_max_order": 5}  # quick: one Gaussian
    set_params(a, train={"max_steps": steps, "sample_every_n_epochs": 0},
               evaluate={"image_draws": 1, "baseline": baseline})  # fmt: skip
    for name in ("collect", "validate", "augment", "train", "evaluate"):
        run(a, "genloop", "stage", name, env=env)
    tag = json.loads((a / "artifacts/evaluate/decision.json").read_text())["challenger"]
    b = work / "b"
    shutil.copytree(a, b, symlinks=True)
    return a, b, tag


def service(root: Path, tag: str, env: dict) -> Server:
    """`bentoml serve` of the project's service/ with the registered model, on a free port."""
    from tasks.core.params import load
    from tasks.package import settings

    env = env | {"BENTOML_HOME": str(root / ".genloop/bentoml"),
                 "GENLOOP_SERVING_DIR": tempfile.mkdtemp(prefix="bench-sharing-")}  # fmt: skip
    return Server("service.service:Genloop", settings(load(root / "params.yaml"), tag), env, cwd=root)


class Load:
    """An open-loop load in a thread: one-sample requests at `rate` a second, whatever the answers'
    latency (a closed loop would send less when the service slows, and hide it)."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.rate = url, rate
        self.marks: list[tuple[float, float, int]] = []  # (sent at, latency, status)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(60)) as client:

            async def one(i: int) -> None:
                sent = time.perf_counter()
                async with client.post(self.url + "/generate", json={"n": 1, "seed": i}) as r:
                    await r.read()
                self.marks.append((sent, time.perf_counter() - sent, r.status))

            tasks, i, start = [], 0, time.perf_counter()
            while not self.stopping.is_set():
                tasks.append(asyncio.ensure_future(one(i)))
                i += 1
                await asyncio.sleep(max(0.0, start + i / self.rate - time.perf_counter()))
            await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()

    def window(self, since: float, until: float) -> dict:
        return figures([m for m in self.marks if since <= m[0] < until], until - since)


def figures(marks: list[tuple[float, float, int]], seconds: float) -> dict:
    ok = [lat for _, lat, code in marks if code == 200]
    q = statistics.quantiles(ok, n=100) if len(ok) >= 2 else [float("nan")] * 99
    errors = sum(code != 200 for _, _, code in marks)
    return {"rps": len(ok) / seconds, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "errors": errors,
            "marks": marks, "seconds": seconds}  # fmt: skip


def merged(*windows: dict) -> dict:
    """One window of several: the service alone before the training beside it and after."""
    return figures([m for w in windows for m in w["marks"]], sum(w["seconds"] for w in windows))


def measure(a: Path, b: Path, tag: str, env: dict, rate: float, window_s: float) -> dict:
    out: dict = {"alone": seconds(train(a, env))}
    pair = [train(a, env), train(b, env)]
    out["pair"] = [seconds(p) for p in pair]
    with service(a, tag, env) as server, Load(server.url, rate) as load:
        time.sleep(5)  # warm: the first requests load what the model's first calls need
        t0 = time.perf_counter()
        time.sleep(window_s / 2)
        t1 = time.perf_counter()
        out["beside_service"] = seconds(train(b, env))
        t2 = time.perf_counter()
        time.sleep(window_s / 2)
        t3 = time.perf_counter()
        out["service_alone"] = merged(load.window(t0, t1), load.window(t2, t3))
        out["service_beside"] = load.window(t1, t2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="each training's budget (default 1000)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests a second to the service")
    parser.add_argument("--seconds", type=float, default=10.0, help="the service's window alone")
    parser.add_argument("--keep", action="store_true", help="keep the projects (printed folder)")
    a = parser.parse_args()
    cores = machine_cores()
    work = Path(tempfile.mkdtemp(prefix="genloop-sharing-"))
    quiet = {"DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "BENTOML_DO_NOT_TRACK": "true",
             "GX_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    base = {k: v for k, v in os.environ.items() if k not in ("GENLOOP_THREADS", "GENLOOP_CORES")}
    base |= quiet | {"GENLOOP_CORES_DIR": str(work / "ledger")}
    base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"
    settings = {"without the plan": base | {"GENLOOP_THREADS": str(cores)}, "with the plan": base}
    try:
        print(f"{cores} cores; preparing two projects in {work} ...", flush=True)
        pa, pb, tag = prepare(work, a.steps, base)
        results = {}
        for name, env in settings.items():
            print(f"measuring {name} ...", flush=True)
            results[name] = measure(pa, pb, tag, env, a.rate, a.seconds)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(results, a.steps, a.rate, cores)


def report(results: dict, steps: int, rate: float, cores: int) -> None:
    names = list(results)
    print(f"\n{steps} training steps of the default digits VAE; the service at {rate:g} requests/s; "
          f"{cores} cores")  # fmt: skip
    print(f"{'':38}" + "".join(f"{n:>26}" for n in names))

    def row(label: str, cell) -> None:
        print(f"{label:38}" + "".join(f"{cell(results[n]):>26}" for n in names))

    def times(t: float, alone: float) -> str:
        return f"{t:.1f} s ({t / alone:.2f}x)"

    row("training alone", lambda r: f"{r['alone']:.1f} s")
    row("beside a second training (mean)", lambda r: times(statistics.mean(r["pair"]), r["alone"]))
    row("beside the service under load", lambda r: times(r["beside_service"], r["alone"]))

    def service(r: dict, key: str) -> str:
        s, alone = r[key], r["service_alone"]["p99_ms"]
        ratio = "" if key == "service_alone" else f" ({s['p99_ms'] / alone:.2f}x)"
        return f"{s['rps']:.0f}/s {s['p99_ms']:.1f} ms{ratio}"

    row("service alone: requests/s, p99", lambda r: service(r, "service_alone"))
    row("service beside training: req/s, p99", lambda r: service(r, "service_beside"))
    row(
        "service errors (alone, beside)",
        lambda r: f"{r['service_alone']['errors']}, {r['service_beside']['errors']}",
    )
    plan = results["with the plan"]
    worst = max(statistics.mean(plan["pair"]), plan["beside_service"]) / plan["alone"]
    p99 = plan["service_beside"]["p99_ms"] / plan["service_alone"]["p99_ms"]
    print(f"with the plan: training beside another process {worst:.2f}x its time alone (target <= 2.2x): "
          f"{'met' if worst <= 2.2 else 'NOT met'}; the service's p99 {p99:.2f}x (target <= 2x): "
          f"{'met' if p99 <= 2 else 'NOT met'}")  # fmt: skip


if __name__ == "__main__":
    main()
