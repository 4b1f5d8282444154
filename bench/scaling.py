"""How the cost grows with the data: the data stages, one training epoch, evaluate and the drift
comparison at 1x, 2x, 4x and 8x the data, in one run.

The data: scikit-learn's 1,797 digits repeated k times, each copy shifted by a pixel and its grey
levels jittered (so that the validation gate sees no duplicates), and Python's help topics repeated k
times (a file per copy). Each size runs in a fresh project folder (this project's code, `git init`)
through the real CLI, `genloop stage <name>` for collect, validate, augment, train (one epoch:
max_steps = steps_per_epoch = one pass over the training split) and evaluate, and then the monitor's
drift comparison (Evidently, as `genloop flow monitor` runs it) on the size's own features, half
against half. It prints seconds per 1,000 items (images, or characters of text) per stage and size,
and each stage's 8x / 1x ratio (target: <= 1.3x, flat), and draws the curves in bench/scaling.png.

    python bench/scaling.py                              # digits and text, 1x 2x 4x 8x
    python bench/scaling.py --families digits --sizes 1,2,4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STAGES = ["collect", "validate", "augment", "train", "evaluate"]
SHIFTS = [(0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1), (1, -1)]
BATCH = 64
PER = {"digits": 1_000, "text": 1_000_000}  # items a printed figure is for
UNITS = {"digits": "1,000 images", "text": "1,000,000 characters"}


def digits(folder: Path, k: int) -> int:
    """k copies of the digits as PNGs per label folder; returns the number of images."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(k)
    for j in range(k):
        dy, dx = SHIFTS[j % len(SHIFTS)]
        for i, (img, label) in enumerate(zip(d.images, d.target, strict=True)):
            px = np.roll(img * (255.0 / 16.0), (dy, dx), axis=(0, 1))
            if j:  # a copy, never byte-identical to another
                px = px + rng.integers(-2, 3, px.shape)
            out = folder / str(label) / f"{j}_{i:04d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(np.rint(px), 0, 255).astype(np.uint8), mode="L").save(out)
    return k * len(d.images)


def text(folder: Path, k: int) -> int:
    """k copies of Python's help topics, a file per topic and copy; returns the number of characters."""
    from pydoc_data.topics import topics

    folder.mkdir(parents=True, exist_ok=True)
    for j in range(k):
        for name, body in sorted(topics.items()):
            (folder / f"{j}_{name}.txt").write_text(body, encoding="utf-8")
    return k * sum(len(t) for t in topics.values())


def project(root: Path) -> None:
    """This project's code and parameters in `root`, a git repository with one commit."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in files.splitlines():
        if name.startswith(("tests/", "bench/")) or not (ROOT / name).is_file():
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, root / name)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@genloop.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], cwd=root, check=True)


def set_params(root: Path, **sections) -> None:
    """params.yaml with these values merged in, key by key at every depth."""
    import yaml

    def merge(base: dict, over: dict) -> dict:
        for key, value in over.items():
            both = isinstance(value, dict) and isinstance(base.get(key), dict)
            base[key] = merge(base[key], value) if both else value
        return base

    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()), sections), sort_keys=False))


def stage(root: Path, name: str, env: dict) -> float:
    genloop = str(Path(sys.executable).parent / "genloop")
    start = time.perf_counter()
    proc = subprocess.run([genloop, "stage", name], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed in {root}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def drift(root: Path, family: str) -> float:
    """The monitor's comparison of the processed data's features, first half against second half."""
    from models.features import ImageFeaturizer, features
    from tasks.core.params import load
    from tasks.monitoring.checks import compare, save_html

    mp = load(str(root / "params.yaml")).require("monitor")
    if family == "digits":
        from PIL import Image

        files = sorted((root / "data/raw/files").rglob("*.png"))
        samples = np.stack([np.asarray(Image.open(f), np.float32)[None] / 255.0 for f in files])
    else:
        samples = [f.read_text() for f in sorted((root / "data/raw/files").rglob("*.txt"))]
    kind, methods = "image" if family == "digits" else "text", mp.methods.model_dump()

    def side(s, e):
        return {"n": len(s), "stats": {n: s[:, i] for i, n in enumerate(names)}, "embedding": e}

    names = ["s0"]  # a warm-up on a few rows first: Evidently's imports are not the data's cost
    tiny = np.random.default_rng(0).normal(size=(8, 1)).astype(np.float32)
    compare("warm-up", side(tiny, tiny), side(tiny, tiny), methods, 1, mp.max_rows)
    start = time.perf_counter()
    stats, embedding = features(kind, samples, ImageFeaturizer(None) if kind == "image" else None)
    half = len(stats) // 2
    names = [f"s{i}" for i in range(stats.shape[1])]

    check = compare("output", side(stats[:half], embedding[:half]), side(stats[half:], embedding[half:]),
                    methods, 1, mp.max_rows)  # fmt: skip
    save_html([check], root / "drift.html")
    return time.perf_counter() - start


def run(family: str, k: int, work: Path, env: dict) -> dict:
    root = work / f"{family}-{k}x"
    project(root)
    items = (
        digits(work / f"{family}-{k}x-data", k)
        if family == "digits"
        else text(work / f"{family}-{k}x-data", k)
    )
    train_items = 0.8 * items if family == "digits" else 0.9 * items / 64  # images, or 64-character windows
    steps = max(1, math.ceil(train_items / BATCH))
    # one epoch, not the character model's own budget (model.gpt.train)
    model = {"family": "vae"} if family == "digits" else {"family": "gpt", "gpt": {"train": None}}
    set_params(root, data={"source": str(work / f"{family}-{k}x-data")}, model=model,
               train={"max_steps": steps, "steps_per_epoch": steps, "sample_every_n_epochs": 1})  # fmt: skip
    times = {name: stage(root, name, env) for name in STAGES}
    times["drift"] = drift(root, family)
    print(
        f"{family} {k}x: {items} items, " + ", ".join(f"{n} {t:.1f} s" for n, t in times.items()), flush=True
    )
    return {"items": items, "times": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="digits,text")
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--keep", action="store_true", help="keep the projects (printed folder)")
    a = parser.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    quiet = ("DVC_NO_ANALYTICS", "DO_NOT_TRACK", "BENTOML_DO_NOT_TRACK")  # no telemetry from anything
    env = {**os.environ, **dict.fromkeys(quiet, "1"), "GX_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    work = Path(tempfile.mkdtemp(prefix="genloop-scaling-"))
    results: dict[str, dict[int, dict]] = {}
    try:
        for family in a.families.split(","):
            results[family] = {k: run(family, k, work, env) for k in sizes}
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    units = " and per ".join(UNITS[f] for f in results)
    print(f"\nseconds per {units}, sizes {', '.join(f'{k}x' for k in sizes)}")
    worst = 0.0
    for family, by_size in results.items():
        for name in [*STAGES, "drift"]:
            per = per_item(family, by_size, name, sizes)
            ratio = per[-1] / per[0]
            worst = max(worst, ratio)
            print(
                f"{family:<7}{name:<10}"
                + "".join(f"{p:10.3f}" for p in per)
                + f"   {sizes[-1]}x/1x {ratio:.2f}x"
            )
    print(f"worst growth {worst:.2f}x (target <= 1.3x)")
    json_out = ROOT / "bench" / "scaling.json"
    json_out.write_text(json.dumps(results, indent=1))
    plot(results, sizes, ROOT / "bench" / "scaling.png")
    print(f"curves: {ROOT / 'bench' / 'scaling.png'}; figures: {json_out}")


def per_item(family: str, by_size: dict, name: str, sizes: list[int]) -> list[float]:
    """Seconds per PER[family] items of stage `name` at each size."""
    return [by_size[k]["times"][name] / by_size[k]["items"] * PER[family] for k in sizes]


def plot(results: dict, sizes: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (family, by_size) in zip(axes[0], results.items(), strict=True):
        for name in [*STAGES, "drift"]:
            per = per_item(family, by_size, name, sizes)
            ax.plot(sizes, [p / per[0] for p in per], marker="o", label=name)
        ax.axhline(1.3, color="grey", linestyle="--", linewidth=1, label="target 1.3x")
        ax.set(title=f"{family}: time per item, relative to 1x", xlabel="data size (x)", xscale="log",
               ylabel="time per item / time per item at 1x")  # fmt: skip
        ax.set_xticks(sizes, [f"{k}x" for k in sizes])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
