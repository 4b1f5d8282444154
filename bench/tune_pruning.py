"""What pruning saves: the same study of the digits VAE run twice in one run, with the pruner of
params.yaml (or --pruner) and without one, same seeds and number of trials. Prints the epochs each
spent and the best validation loss each reached, side by side, and their ratios.

    python bench/tune_pruning.py                      # tune.* of params.yaml
    python bench/tune_pruning.py --trials 24 --set tune.max_steps=1500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TARGET = "pruned epochs <= 0.5 x unpruned; pruned best within 2% of unpruned best"


def run_study(params, name: str) -> dict:
    from tasks.tuning import report, study

    start = time.perf_counter()
    study.work(params, name)
    seconds = time.perf_counter() - start
    rows = report.trial_rows(study.open_study(params, name=name))
    complete = [r["value"] for r in rows if r["state"] == "complete"]
    return {
        "trials": len(rows),
        "pruned": sum(r["state"] == "pruned" for r in rows),
        "failed": sum(r["state"] == "fail" for r in rows),
        "epochs": sum(r["epochs"] or 0 for r in rows),
        "best": min(complete) if complete else float("nan"),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    import yaml
    from quality import prepare

    from tasks.core.params import load, with_values

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--trials", type=int, default=None, help="default: tune.n_trials")
    ap.add_argument("--pruner", default=None, help="median | hyperband (default: tune.pruner)")
    ap.add_argument("--out", default=str(ROOT / "bench/.out/tune"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a parameter")
    a = ap.parse_args()
    changes = {k: yaml.safe_load(v) for k, v in (item.partition("=")[::2] for item in a.set)}
    base = load(a.params)
    trials = a.trials or base.require("tune").n_trials
    base = with_values(base, {"model.family": "vae", "tune.enabled": True, "tune.workers": 1,
                              "tune.n_trials": trials, **changes}, "bench settings")  # fmt: skip
    if a.pruner:
        base = with_values(base, {"tune.pruner": a.pruner}, "--pruner")
    out = Path(a.out)
    project = prepare("image", out, base)
    os.chdir(project)  # the study's journal and trial folders go under artifacts/tune/ there
    shutil.rmtree(".genloop/tune/study", ignore_errors=True)
    results = {}
    for label, pruner in ((base.tune.pruner, base.tune.pruner), ("none", "none")):
        p = with_values(base, {"tune.pruner": pruner, "tune.study": f"bench-{pruner}"}, "bench")
        results[label] = run_study(p, f"bench-{pruner}")
        print(json.dumps({"pruner": label} | results[label]), flush=True)
    pruned, full = results[base.tune.pruner], results["none"]
    epochs_ratio = pruned["epochs"] / full["epochs"]
    best_gap = (pruned["best"] - full["best"]) / abs(full["best"])
    t = base.tune
    print(
        f"\ndigits VAE, {trials} trials of {t.max_steps} steps, TPE seed {t.seed}, "
        f"{t.startup_trials} startup trials, warm-up {t.warmup_epochs} epochs, patience {t.patience}"
    )
    print("| pruner | trials pruned | epochs | best val bits/dim | seconds |\n|---|---|---|---|---|")
    for label, r in results.items():
        print(
            f"| {label} | {r['pruned']} of {r['trials']} | {r['epochs']} | {r['best']:.4f} | {r['seconds']} |"
        )
    ok = epochs_ratio <= 0.5 and best_gap <= 0.02
    print(
        f"\nepochs: {epochs_ratio:.2f}x the unpruned study's; best: {best_gap:+.1%} from the unpruned "
        f"study's  (target: {TARGET}: {'met' if ok else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
