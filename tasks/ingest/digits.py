"""scikit-learn's 1,797 bundled 8x8 digits, read from the CSV it ships (what `load_digits` reads) without
importing scikit-learn: its import costs seconds in every collect, more than reading the digits. Plain
numpy, so that bench/gpu.py reads them the same way on a machine without the pipeline's packages."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images, labels): images (1797, 8, 8) float64 in 0..16, labels (1797,) int64, as `load_digits`."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    folders = (spec.submodule_search_locations or []) if spec else []
    csv = next((Path(f) / "datasets/data/digits.csv.gz" for f in folders), None)
    if csv is None or not csv.is_file():  # a scikit-learn that keeps it elsewhere: ask it
        from sklearn.datasets import load_digits as bundled

        d = bundled()
        return d.images, d.target.astype(np.int64)
    with gzip.open(csv, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
