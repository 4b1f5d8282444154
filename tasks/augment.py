"""augment: deterministic train/val/test split into compact arrays, augmentation on train only.

Images -> data/processed/{split}_x.npy (uint8, N x C x H x W) and {split}_y.npy (int64 class ids).
Text   -> data/processed/{split}.npy (uint16 character ids) over the vocabulary in meta.json.

Images are split per class (stratified) with a seeded shuffle; each training image gets
`augment.image.factor` extra copies with a small random shift, rotation and Gaussian noise (none by
default: a generative model would learn to draw the copies, see params.yaml).
Text is split contiguously (documents in name order; the test split is the corpus's tail) so no
window of held-out text leaks into training. Text gets no augmentation here: the trainer draws
windows at random offsets every step, which is the augmentation a character model benefits from.
Plain .npy files (not .npz, whose zip headers carry timestamps) keep the output byte-identical.
"""

from __future__ import annotations

from pathlib import Path

from tasks.core import datasets, paths
from tasks.core.datasets import SPLITS, class_order
from tasks.core.orchestration import publish_table, repro, task
from tasks.core.params import AugmentParams, ImageAugment, Params
from tasks.core.storage import dumps, read_json, staged_dir
from tasks.ingest.batches import require_passed


def is_feedback(entry: dict) -> bool:
    """A file collect took from data/feedback: a sample the model drew and people rated highly."""
    return str(entry.get("source", "")).startswith("feedback:")


def split_indices(labels: list, val: float, test: float, seed: int) -> dict[str, list[int]]:
    """Seeded split, stratified: every label contributes the same fractions to each split."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    groups: dict = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    for label in sorted(groups, key=str):
        idx = rng.permutation(groups[label])
        n_test, n_val = round(len(idx) * test), round(len(idx) * val)
        out["test"] += idx[:n_test].tolist()
        out["val"] += idx[n_test : n_test + n_val].tolist()
        out["train"] += idx[n_test + n_val :].tolist()
    return {s: sorted(v) for s, v in out.items()}


def augment_images(x, p: ImageAugment, seed: int):  # uint8 (N, C, H, W) -> uint8 (N * factor, C, H, W)
    import numpy as np
    from scipy.ndimage import rotate, shift

    rng = np.random.default_rng(seed + 1)
    copies = []
    for _ in range(p.factor):
        for img in x.astype(np.float64):
            dy, dx = rng.integers(-p.max_shift, p.max_shift + 1, size=2)
            angle = rng.uniform(-p.max_rotation_deg, p.max_rotation_deg)
            out = rotate(img, angle, axes=(1, 2), reshape=False, order=1, mode="constant")
            out = shift(out, (0, dy, dx), order=0, mode="constant")
            out = out + rng.normal(0.0, p.noise_std * 255.0, size=out.shape)
            copies.append(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    return np.stack(copies) if copies else np.empty((0, *x.shape[1:]), np.uint8)


def preview(original, labels, augmented, classes: list[str], path: Path, per_class: int = 3) -> Path:
    """The training images of every class: a row per class, each original followed by its copies (if any).
    original uint8 (N, C, H, W) with class ids `labels`; augmented holds factor copies of all N, in turn."""
    import numpy as np

    from tasks.core.pictures import save_grid

    n, factor = len(original), len(augmented) // max(len(original), 1)
    rows, names = [], []
    for c, name in enumerate(classes or [None]):
        idx = np.flatnonzero(labels == c)[:per_class] if classes else np.arange(min(per_class, n))
        tiles = [img for i in idx for img in (original[i], *(augmented[k * n + i] for k in range(factor)))]
        blank = np.zeros_like(original[0])
        rows.append(tiles + [blank] * ((1 + factor) * per_class - len(tiles)))  # a class with fewer images
        names.append(str(name) if name is not None else "")
    head = ["original", *(f"copy {k + 1}" for k in range(factor))] * per_class if factor else None
    images = np.stack([t for row in rows for t in row]).astype(np.float32) / 255
    return save_grid(
        images, path, cols=(1 + factor) * per_class, col_names=head, row_names=names if classes else None
    )


def process_images(files: list[dict], p: AugmentParams, out: Path, raw: Path = paths.RAW) -> dict:
    import numpy as np

    from tasks.core.pictures import read_pixels

    classes = class_order(f["label"] for f in files if f["label"] is not None)
    class_id = {c: i for i, c in enumerate(classes)}
    arrays = []
    for f in files:
        px = read_pixels(raw / f["path"])  # as validate checked it
        arrays.append(px[None] if px.ndim == 2 else px.transpose(2, 0, 1))  # (C, H, W)
    x = np.stack(arrays).astype(np.uint8)
    y = np.array([class_id.get(f["label"], -1) for f in files], dtype=np.int64)
    # the splits are drawn from the source's files alone (the same as without feedback), and the
    # model's own samples people rated (collect's feedback) go to train only: val and test stay real
    real = [i for i, f in enumerate(files) if not is_feedback(f)]
    drawn = split_indices([files[i]["label"] for i in real], p.val_fraction, p.test_fraction, p.seed)
    parts = {s: [real[j] for j in idx] for s, idx in drawn.items()}
    parts["train"] = sorted(parts["train"] + [i for i, f in enumerate(files) if is_feedback(f)])
    counts = {}
    for split, idx in parts.items():
        xs, ys = x[idx], y[idx]
        if split == "train":
            extra = augment_images(xs, p.image, p.seed)
            preview(xs, ys, extra, classes, out / "preview.png")
            xs, ys = np.concatenate([xs, extra]), np.concatenate([ys] + [ys] * p.image.factor)
        np.save(out / f"{split}_x.npy", xs)
        np.save(out / f"{split}_y.npy", ys)
        counts[split] = len(xs)
    return {
        "kind": "image",
        "shape": list(x.shape[1:]),
        "classes": classes,
        "counts": counts,
        "originals": {s: len(v) for s, v in parts.items()},
    }


def process_text(files: list[dict], p: AugmentParams, out: Path, raw: Path = paths.RAW) -> dict:
    import numpy as np

    from tasks.core.text_split import split_text

    def joined(chosen: list[dict]) -> str:
        return "\n".join((raw / f["path"]).read_text("utf-8") for f in chosen)  # manifest order: by path

    # the source's text is split as without feedback; the rated samples (collect's feedback) join train
    text, extra = (
        joined([f for f in files if not is_feedback(f)]),
        joined([f for f in files if is_feedback(f)]),
    )
    vocab, parts = split_text(text, p.test_fraction, p.val_fraction, extra)
    for split, arr in parts.items():
        np.save(out / f"{split}.npy", arr)
    return {"kind": "text", "vocab": vocab, "counts": {s: len(a) for s, a in parts.items()}}


def process(manifest: dict, p: AugmentParams, out: Path, raw: Path = paths.RAW) -> dict:
    """The splits of a collected manifest's files (under `raw`) and their meta.json, written into `out`."""
    make = process_images if manifest["kind"] == "image" else process_text
    meta = make(manifest["files"], p, out, raw) | {"source": manifest["source"], "seed": p.seed}
    meta["sha256"] = datasets.hashes(out)  # checked by every reader (tasks/core/datasets.py)
    (out / "meta.json").write_text(dumps(meta))
    return meta


def run(params: Params) -> dict:
    """Refuse unvalidated data, then write data/processed/ whole (or leave the old one untouched)."""
    require_passed()
    manifest = read_json(paths.MANIFEST)
    with staged_dir(paths.PROCESSED) as stage:
        return process(manifest, params.augment, stage)


@task(name="augment")
def augment_task() -> dict:
    """Run the DVC stage `augment` and show the split sizes in the Prefect UI."""
    repro("augment")
    meta = read_json(paths.PROCESSED / "meta.json")
    publish_table(
        "augment", [{"split": s, "examples": n} for s, n in meta["counts"].items()], "Training-ready splits"
    )
    return meta
