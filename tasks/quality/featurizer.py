"""The feature extractor of image metrics: trained once per training set, then reused (a DVC output).

It is retrained only when the training images, their labels or its own code change (a fingerprint
beside the weights says which), so every model evaluated on the same data is measured by the same eye.
Without class labels there is nothing to learn: features are then the pixels themselves.

With GENLOOP_CACHE_DIR set, trained featurizers are also kept there by fingerprint, so other checkouts
and projects on the same machine (CI, a test suite, a second clone) reuse the eye instead of training it.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from models.features import FEATURIZER_INFO as INFO
from models.features import FEATURIZER_WEIGHTS as WEIGHTS
from tasks.core.storage import content_hash, read_json, remove_orphans, sha256_bytes, write_json


def fingerprint(train_x: np.ndarray, train_y: np.ndarray, seed: int) -> str:
    import models.classifier

    code = Path(models.classifier.__file__).read_bytes() + Path(__file__).read_bytes()  # net and training
    return content_hash(
        {
            "x": sha256_bytes(train_x.tobytes()),
            "y": sha256_bytes(train_y.tobytes()),
            "shape": list(train_x.shape),
            "seed": seed,
            "code": sha256_bytes(code),
        }
    )


class Features:
    """images (N, C, H, W) in [0, 1] -> features (N, D) as float64 numpy (the drift monitor's
    embedding of images, models/features.py, in the precision the metrics want)."""

    def __init__(self, net=None) -> None:
        from models.features import ImageFeaturizer

        self.net = net
        self._featurize = ImageFeaturizer(net)

    def __call__(self, images: np.ndarray, batch: int = 512) -> np.ndarray:
        return self._featurize(images, batch).astype(np.float64)


def ensure(
    folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], seed: int
) -> tuple[Features, dict]:
    """Load the featurizer in `folder` if it was trained on this training set, else train and save it."""
    x, y = train
    classes = int(y.max()) + 1 if len(y) and y.min() >= 0 else 0
    if classes < 2:
        info = {"kind": "pixels", "reason": "no class labels to learn features from"}
        write_json(folder / INFO, info)
        return Features(None), info
    stamp = fingerprint(x, y, seed)
    info_path = folder / INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info.get("fingerprint") == stamp:
        return Features(_load(folder, info)), info
    shared = _shared(stamp)
    if shared is not None and (shared / INFO).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shared / WEIGHTS, folder / WEIGHTS)
        info = read_json(shared / INFO)
        write_json(info_path, info)  # last, whole: the fingerprint vouches for the weights beside it
        return Features(_load(folder, info)), info
    net, accuracy = _train(x, y, test, classes, seed)
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    save_model(net, str(folder / WEIGHTS))
    info = {
        "kind": "classifier",
        "fingerprint": stamp,
        "config": {"channels": x.shape[1], "n_classes": classes},
        "test_accuracy": round(accuracy, 4),
    }
    write_json(info_path, info)
    if shared is not None:
        _publish(folder, shared)
    return Features(net), info


def _shared(stamp: str) -> Path | None:
    root = os.environ.get("GENLOOP_CACHE_DIR")
    return Path(root) / "featurizer" / stamp if root else None


def _publish(folder: Path, shared: Path) -> None:
    """Copy the trained featurizer into the shared cache, whole or not at all (a rename). A cache that
    cannot be written (read-only, full) costs only the reuse, never the evaluation."""
    staging = None
    try:
        shared.parent.mkdir(parents=True, exist_ok=True)
        remove_orphans(shared.parent, ".staging-")
        staging = Path(tempfile.mkdtemp(dir=shared.parent, prefix=f".staging-{os.getpid()}-"))
        for name in (WEIGHTS, INFO):
            shutil.copy2(folder / name, staging / name)
        staging.rename(shared)
    except OSError as err:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not shared.is_dir():  # else another process published the same fingerprint first
            print(f"note: the featurizer was not kept in {shared.parent}: {err}", file=sys.stderr)


def _load(folder: Path, info: dict):
    from models.features import ImageFeaturizer

    return ImageFeaturizer.load(folder).net


def _train(x: np.ndarray, y: np.ndarray, test: tuple, classes: int, seed: int, steps: int = 1000):
    """Plain, seeded, CPU: a few seconds on digits. A budget in steps, not epochs, so a small training
    split gets as sharp an eye as a large one (15 epochs of 1,439 digits: 89% test accuracy; 1,000
    steps: 98%). A weak eye blurs FD, precision and recall towards "looks alike"."""
    import torch
    import torch.nn.functional as F

    from models import cores
    from models.classifier import Classifier, Config

    torch.manual_seed(seed)
    net = Classifier(Config(channels=x.shape[1], n_classes=classes))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    xs = torch.as_tensor(x, dtype=torch.float32) / 255
    ys = torch.as_tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    batches = (  # a fresh shuffle every pass over the data, as many passes as the steps take
        idx for _ in itertools.count() for idx in torch.randperm(len(xs), generator=g).split(128)
    )
    for step, idx in enumerate(itertools.islice(batches, steps)):
        if step % 50 == 0:
            cores.follow()
        loss = F.cross_entropy(net(xs[idx]), ys[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        tx = torch.as_tensor(test[0], dtype=torch.float32) / 255
        accuracy = (net(tx).argmax(1) == torch.as_tensor(test[1])).float().mean().item()
    return net, accuracy
