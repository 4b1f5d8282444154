"""How text becomes model input: a vocabulary of its characters in sorted order, each character's id, and
contiguous train / validation / test parts (the test part last). Plain numpy and no params object, so
that bench/gpu.py splits as the augment stage does on a machine without the pipeline's packages."""

from __future__ import annotations

import numpy as np


def split_text(
    text: str, test_fraction: float, val_fraction: float, extra: str = ""
) -> tuple[list[str], dict[str, np.ndarray]]:
    """`text` split by the fractions; `extra` (rated samples) joins the training part only."""
    own = len(text)
    codes = np.frombuffer((text + ("\n" + extra if extra else "")).encode("utf-32-le"), dtype=np.uint32)
    points, ids = np.unique(codes, return_inverse=True)  # the vocabulary, sorted, and each one's id
    ids = ids.astype(np.uint16)
    n_test, n_val = round(own * test_fraction), round(own * val_fraction)
    n_train = own - n_val - n_test
    parts = {
        "train": np.concatenate([ids[:n_train], ids[own:]]),
        "val": ids[n_train : n_train + n_val],
        "test": ids[n_train + n_val : own],
    }
    return [chr(c) for c in points.tolist()], parts
