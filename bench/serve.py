"""Load on the service, side by side in one run: our service with adaptive batching on and off, a plain
BentoML service around the same model with the library's defaults (the reference), and the raw model's
batched sampling (the ceiling).

Every server is started here with `bentoml serve` on a free port before any is measured; then, at each
concurrency (1, 8 and 64), the servers take turns, a slice of a second each for several rounds, so a
change in the machine's load falls on all of them alike. The clients send one-sample requests over
kept-alive connections with aiohttp (httpx's connection pool costs more than these servers do past a
few dozen connections, and capped the figures). It prints requests/s (and characters/s for text),
p50/p99 latency and the count of non-2xx answers (429 counts separately).
Targets: no 5xx and no rejection below the configured concurrency limit; for the GPT, batching gives
>= 5x the characters/s of no batching at concurrency 64; for the digits VAE, at least the plain
service's requests/s.

    python bench/serve.py                         # the champion of params.yaml's model line
    python bench/serve.py --model genloop-pydoc-topics-gpt:... --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve` in the background, stopped (with its workers) on exit."""

    def __init__(self, target: str, args: dict, env: dict, cwd: Path = ROOT) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [str(Path(sys.executable).parent / "bentoml"), "serve", target, "--port", str(self.port)]
        cmd += [f"--arg={k}={v}" for k, v in args.items()]
        fd, self.log = tempfile.mkstemp(prefix="bench-serve-", suffix=".log")
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=fd, stderr=subprocess.STDOUT, env=env)
        os.close(fd)

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited; see {self.log}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"server not ready in 120 s; see {self.log}")

    def __exit__(self, *exc) -> None:
        from tasks.serving.process import stop

        stop({"pid": self.proc.pid, "started": None})


async def load(url: str, body, concurrency: int, seconds: float) -> dict:
    """`concurrency` clients sending back to back for `seconds`; latency per request."""
    import aiohttp

    latencies, codes, chars = [], [], 0
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(120)) as client:

        async def worker(k: int) -> None:
            nonlocal chars
            i = 0
            while time.perf_counter() < stop:
                t = time.perf_counter()
                async with client.post(url + "/generate", json=body(k * 100_000 + i)) as r:
                    answer = await r.read()
                latencies.append(time.perf_counter() - t)
                codes.append(r.status)
                if r.status == 200:
                    chars += sum(len(s.get("text", "")) for s in json.loads(answer)["samples"])
                i += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"elapsed": elapsed, "latencies": latencies, "codes": codes, "chars": chars}


def summary(runs: list[dict]) -> dict:
    """The rounds of one server at one concurrency, as one measurement."""
    elapsed = sum(r["elapsed"] for r in runs)
    codes = [c for r in runs for c in r["codes"]]
    ok = [lat for r in runs for lat, c in zip(r["latencies"], r["codes"], strict=True) if c == 200]
    q = statistics.quantiles(ok, n=100) if len(ok) >= 2 else [float("nan")] * 99
    return {
        "rps": len(ok) / elapsed,
        "chars_s": sum(r["chars"] for r in runs) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "429": sum(c == 429 for c in codes),
        "non2xx": sum(not 200 <= c < 300 for c in codes),
        "5xx": sum(c >= 500 for c in codes),
    }


def ceiling(tag: str, body, batch: int = 64, seconds: float = 3.0) -> dict:
    """The raw model's batched sampling: `batch` one-sample jobs per call, no HTTP."""
    from models import export
    from tasks.registry import store

    model = export.load(store.folder(tag))
    jobs = [{k: v for k, v in _job(body(i)).items()} for i in range(batch)]
    model.sample_batch(jobs)  # warm-up
    n, chars, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = model.sample_batch(jobs)
        n += batch
        chars += sum(len(s) for r in out for s in r) if model.data["kind"] == "text" else 0
    elapsed = time.perf_counter() - start
    return {"rps": n / elapsed, "chars_s": chars / elapsed}


def _job(req: dict) -> dict:
    job = {"n": req["n"], "seed": req["seed"]}
    if "prompt" in req:
        job |= {"condition": req["prompt"], "length": req["length"]}
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="registered version (default: the champion of the model line)")
    parser.add_argument("--seconds", type=float, default=8.0, help="load per server and concurrency level")
    parser.add_argument("--length", type=int, default=64, help="text: characters per request")
    parser.add_argument("--levels", default="1,8,64")
    parser.add_argument("--rounds", type=int, default=4, help="turns each server takes per level")
    a = parser.parse_args()
    os.chdir(ROOT)
    from tasks.core.params import line
    from tasks.core.params import load as load_params
    from tasks.package import settings
    from tasks.registry import champions, store

    params = load_params()
    tag = a.model or champions.champion(store.name_of(line(params)))
    if tag is None:
        raise SystemExit("no champion: run `dvc repro evaluate` first, or pass --model")
    from models import export

    data = export.describe(store.folder(tag))["data"]
    text = data["kind"] == "text"  # text rows report characters/s too
    classes = [str(c) for c in data.get("classes") or []]
    if text:
        prompt = "".join(c for c in "The " if c in data["vocab"])

        def body(i: int) -> dict:
            return {"n": 1, "prompt": prompt, "length": a.length, "seed": i}
    else:

        def body(i: int) -> dict:
            return {"n": 1, "seed": i} | ({"label": classes[i % len(classes)]} if classes else {})

    levels = [int(x) for x in a.levels.split(",")]
    limit = max(levels)  # the configured concurrency limit: no level goes above it
    env = {**os.environ, "BENTOML_HOME": str(store.home()), "BENTOML_DO_NOT_TRACK": "true",
           "GENLOOP_SERVING_DIR": tempfile.mkdtemp(prefix="bench-serving-")}  # fmt: skip
    ours = settings(params, tag) | {"max_concurrency": limit}  # params.yaml's serve section, as packaged
    setups = [
        ("ours, batching on", "service.service:Genloop", ours | {"batching": True}),
        ("ours, batching off", "service.service:Genloop", ours | {"batching": False}),
        ("plain BentoML (reference)", "bench.plain_service:Plain", {"model": tag}),
    ]
    rows = []
    with contextlib.ExitStack() as stack:
        servers = [(name, stack.enter_context(Server(target, args, env))) for name, target, args in setups]
        for _, server in servers:
            asyncio.run(load(server.url, body, 1, 1.0))  # warm-up
        for c in levels:
            runs: dict[str, list] = {name: [] for name, _ in servers}
            for _ in range(a.rounds):
                for name, server in servers:
                    runs[name].append(asyncio.run(load(server.url, body, c, a.seconds / a.rounds)))
            rows += [(name, c, summary(runs[name])) for name, _ in servers]
        rows.sort(key=lambda row: [name for name, _, _ in setups].index(row[0]))
    top = ceiling(tag, body)
    print(f"\nmodel {tag}; one sample per request{f', {a.length} characters' if text else ''}; "
          f"{a.seconds:g} s per level; concurrency limit {limit}")  # fmt: skip
    head = f"{'setup':<28}{'conc':>5}{'req/s':>9}" + (f"{'chars/s':>10}" if text else "")
    print(head + f"{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'429':>6}{'5xx':>6}")
    for name, c, r in rows:
        line = f"{name:<28}{c:>5}{r['rps']:>9.1f}" + (f"{r['chars_s']:>10.0f}" if text else "")
        print(line + f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['non2xx']:>9}{r['429']:>6}{r['5xx']:>6}")
    print(
        f"{'raw model, batches of 64':<28}{'':>5}{top['rps']:>9.0f}"
        + (f"{top['chars_s']:>10.0f}" if text else "")
    )
    by = {(n, c): r for n, c, r in rows}
    key = "chars_s" if text else "rps"
    print()
    for c in levels:  # ours (batching on, the default) beside the plain service, at every level
        on, plain = by[("ours, batching on", c)], by[("plain BentoML (reference)", c)]
        print(f"concurrency {c:>3}: ours / plain = {on['rps'] / max(plain['rps'], 1e-9):.2f}x req/s "
              f"(target >= 1x); p99 {on['p99_ms']:.1f} ms vs {plain['p99_ms']:.1f} ms")  # fmt: skip
    c = max(levels)
    on, off = by[("ours, batching on", c)], by[("ours, batching off", c)]
    print(f"concurrency {c:>3}: batching on / off = {on[key] / max(off[key], 1e-9):.2f}x {key}"
          f"{' (target >= 5x)' if text else ''}; batching on / raw model's batched ceiling = "
          f"{on[key] / max(top[key], 1e-9):.0%}{' (target >= 60%)' if text else ''}")  # fmt: skip
    fails = sum(r["5xx"] for _, _, r in rows)
    rejected = sum(r["429"] for n, c2, r in rows if c2 < limit)
    print(f"5xx answers: {fails}; rejections below the limit: {rejected} (target: 0 and 0)")


if __name__ == "__main__":
    main()
