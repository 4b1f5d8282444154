"""How long does a `dvc repro` take when nothing changed, against DVC's own startup floor?

Run from the project folder (`make bench`). Brings the pipeline up to date once (untimed), then times
`dvc --version` and a no-op `dvc repro` alternately, N times each, and prints medians and their ratio.
Target: the no-op repro under 1.5 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

DVC = [sys.executable, "-m", "dvc"]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--runs", type=int, default=7, help="timed runs of each command (default 7)")
    args = parser.parse_args()
    if not Path("dvc.yaml").is_file():
        sys.exit("run from the project folder (where dvc.yaml is)")

    subprocess.run([*DVC, "repro"], check=True, capture_output=True)  # up to date first, untimed
    noop = subprocess.run([*DVC, "repro"], check=True, capture_output=True, text=True)
    if "up to date" not in noop.stdout:
        sys.exit(f"the pipeline is not stable: a second repro did work:\n{noop.stdout}")

    floor, repro = [], []
    for _ in range(args.runs):  # alternate, so drift on the machine hits both alike
        floor.append(timed([*DVC, "--version"]))
        repro.append(timed([*DVC, "repro"]))
    f, r = statistics.median(floor), statistics.median(repro)
    print(f"dvc --version (startup floor)  median {f:.3f} s   min {min(floor):.3f} s   ({args.runs} runs)")
    print(f"dvc repro, nothing to do       median {r:.3f} s   min {min(repro):.3f} s   ({args.runs} runs)")
    print(f"ratio no-op repro / floor      {r / f:.2f}x")
    print(f"target no-op repro < 1.5 s     {'met' if r < 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
