"""What a drift check costs: the monitor's comparison against Evidently's DataDriftPreset with its
defaults, on the same data in one run, and the window query on a serving.db of many logged samples.

The data: a reference and a current window of `--rows` rows x `--features` features (the current one
shifted on a quarter of the features). Ours is what the monitor runs on an image window: each column
as a per-sample statistic (Evidently ValueDrift, Wasserstein) and all of them as one embedding (MMD on
at most monitor.max_rows rows a side), plus the HTML report. Evidently's preset picks a test per
column (K-S above 1,000 rows) and draws a distribution plot for each.

    python bench/drift.py                         # 10,000 x 64, and 1,000,000 logged samples
    python bench/drift.py --rows 2000 --logged 100000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = "ours <= 5 s for 10,000 x 64 on 2 cores; the window query < 1 s at 1M logged samples"


def data(rows: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (rows, features))
    current = rng.normal(0, 1, (rows, features))
    current[:, : features // 4] += 0.5  # a quarter of the features moved
    return reference, current


def ours(reference: np.ndarray, current: np.ndarray, folder: Path) -> tuple[float, int]:
    from tasks.core.params import load
    from tasks.monitoring.checks import compare, save_html

    mp = load(str(ROOT / "params.yaml")).require("monitor")
    names = [f"f{i}" for i in range(reference.shape[1])]

    def side(x):
        return {"n": len(x), "stats": {n: x[:, i] for i, n in enumerate(names)}, "embedding": x}

    start = time.perf_counter()
    check = compare("output", side(reference), side(current), mp.methods.model_dump(), 1, mp.max_rows)
    save_html([check], folder / "ours.html")
    return time.perf_counter() - start, len(check.drifted)


def preset(reference: np.ndarray, current: np.ndarray, folder: Path) -> tuple[float, int]:
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    names = [f"f{i}" for i in range(reference.shape[1])]
    start = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(
        pd.DataFrame(current, columns=names), pd.DataFrame(reference, columns=names)
    )
    snapshot.save_html(str(folder / "preset.html"))
    drifted = next(
        (
            m["value"]["count"]
            for m in snapshot.dict()["metrics"]
            if "DriftedColumnsCount" in m["metric_name"]
        ),
        -1,
    )
    return time.perf_counter() - start, int(drifted)


def window_query(logged: int, window: int, folder: Path) -> dict[str, float]:
    """Fill a serving.db with `logged` samples, then time the monitor's two windows on it, with the
    index on `at` and without."""
    import sqlite3

    from service.store import Store
    from tasks.monitoring.logs import ServingLogs

    store = Store(folder)
    now = time.time()
    blob = np.zeros(64, np.float32).tobytes()
    with store.lock:
        store.db.execute("BEGIN")
        store.db.executemany(
            "INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                (f"r{i}-0", f"r{i}", now - (logged - i), "genloop-x:1", i, 0, 1, "3", 1,
                 None, None, None, None, None, "[0.1, 0.2, 0.3]", blob, 1.0)
                for i in range(logged)
            ),
        )  # fmt: skip
        store.db.execute("COMMIT")
    logs = ServingLogs([store.path])
    out = {}
    for label in ("indexed", "no index"):
        start = time.perf_counter()
        rows = logs.samples("genloop-x:", until=now + 1, last=window)
        out[f"last {window} samples, {label}"] = time.perf_counter() - start
        start = time.perf_counter()
        hour = logs.samples("genloop-x:", since=now - 3600, until=now + 1)
        out[f"last hour ({len(hour)} samples), {label}"] = time.perf_counter() - start
        assert len(rows) == window
        db = sqlite3.connect(store.path)
        db.execute("DROP INDEX IF EXISTS samples_at")  # the same queries again, as a full scan
        db.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--logged", type=int, default=1_000_000)
    ap.add_argument("--window", type=int, default=5000)
    a = ap.parse_args()
    reference, current = data(a.rows, a.features)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ours(reference[:200], current[:200], folder)  # imports and first-call costs, out of the timing
        t_ours, n_ours = ours(reference, current, folder)
        t_preset, n_preset = preset(reference, current, folder)
        print(f"drift report on {a.rows:,} rows x {a.features} features (a quarter of them shifted)")
        print(f"  {'':34} {'seconds':>8} {'drifted':>8}")
        print(f"  {'ours (Wasserstein each + MMD)':34} {t_ours:8.2f} {n_ours:8d}")
        print(f"  {'Evidently DataDriftPreset()':34} {t_preset:8.2f} {n_preset:8d}")
        print(f"  ratio ours / preset: {t_ours / t_preset:.2f}x")
        print(f"\nwindow query on serving.db with {a.logged:,} logged samples")
        for label, seconds in window_query(a.logged, a.window, folder / "log").items():
            print(f"  {label:44} {seconds:8.3f} s")
    print(f"\ntarget: {TARGET}")


if __name__ == "__main__":
    main()
