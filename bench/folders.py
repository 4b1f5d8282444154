"""Folders of images like a user's own, made offline and seeded: what `bench/quality.py --folders` trains
on beside the embedded digits, and what the tests use as a user's folder. Each is a folder of PNGs in
one sub-folder per class, as `data.source` takes it.

    python bench/folders.py OUT          # writes OUT/shapes, OUT/patches, OUT/strokes
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

# name -> (what it is, as the table says it)
FOLDERS = {
    "digits": "sklearn's 8x8 digits (the embedded source), grey, 10 classes, 1,797 images",
    "shapes": "16x16 grey shapes (circle, square, triangle) at random places and sizes, 300 images",
    "patches": "32x32 colour patches cut from scikit-learn's two sample photographs, 520 images",
    "strokes": "28x28 grey pen strokes in four directions, 400 images",
}


def _png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _mask(label: str, size: int, rng: np.random.Generator, low: float = 0.2) -> np.ndarray:
    """A filled shape at a random place and scale: a circle, a square, or else a triangle pointing up."""
    yy, xx = np.mgrid[0:size, 0:size]
    r = rng.uniform(size * low, size * 0.4)
    cy, cx = rng.uniform(r, size - r, 2)
    if label == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if label == "square":
        return (abs(yy - cy) <= r * 0.8) & (abs(xx - cx) <= r * 0.8)
    return (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)


def shapes(
    root: Path, per_class: int = 100, size: int = 16, seed: int = 0, classes=("circle", "square", "triangle")
) -> Path:
    """Grey shapes, one class each, at a random place and scale, with sensor noise."""
    rng = np.random.default_rng(seed)
    for label in classes:
        for i in range(per_class):
            mask = _mask(label, size, rng)
            pixels = (mask * rng.uniform(160, 255) + rng.normal(0, 8, mask.shape)).clip(0, 255)
            _png(root / label / f"{i:03d}.png", pixels.astype(np.uint8))
    return root


def colour_shapes(root: Path, per_class: int = 100, size: int = 16, seed: int = 0) -> Path:
    """RGB shapes: red circles, green squares and blue triangles (each colour varied), so that whether
    colour survives every stage shows in each class's samples."""
    rng = np.random.default_rng(seed)
    colours = {"circle": (230, 60, 40), "square": (50, 210, 60), "triangle": (40, 80, 230)}
    for label, colour in colours.items():
        for i in range(per_class):
            mask = _mask(label, size, rng, low=0.25)
            tint = np.clip(np.array(colour) + rng.normal(0, 15, 3), 0, 255)
            pixels = mask[..., None] * tint + rng.normal(0, 6, (size, size, 3)) + 20
            _png(root / label / f"{i:03d}.png", pixels.clip(0, 255).astype(np.uint8))
    return root


def patches(root: Path, size: int = 32) -> Path:
    """Non-overlapping size x size colour patches of china.jpg and flower.jpg (scikit-learn ships both),
    one class per photograph: 13 x 20 = 260 each at 32."""
    from sklearn.datasets import load_sample_images

    found = load_sample_images()
    for photo, path in zip(found.images, found.filenames, strict=True):
        label = Path(path).stem
        rows, cols = photo.shape[0] // size, photo.shape[1] // size
        for r in range(rows):
            for c in range(cols):
                cut = photo[r * size : (r + 1) * size, c * size : (c + 1) * size]
                _png(root / label / f"{r:02d}-{c:02d}.png", np.ascontiguousarray(cut, dtype=np.uint8))
    return root


def strokes(root: Path, per_class: int = 100, size: int = 28, seed: int = 0) -> Path:
    """Thick pen strokes of random length and place, one class per direction (within 15 degrees of
    horizontal, rising, vertical, falling); sizes that are no power of two are padded by the model."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for k, label in enumerate(("horizontal", "rising", "vertical", "falling")):
        for i in range(per_class):
            angle = np.deg2rad(45 * k + rng.uniform(-15, 15))
            cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
            half, width = rng.uniform(size * 0.2, size * 0.4), rng.uniform(1.0, 2.2)
            along = (xx - cx) * np.cos(angle) - (yy - cy) * np.sin(angle)
            across = (xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
            mask = (np.abs(across) <= width) & (np.abs(along) <= half)
            pixels = (mask * rng.uniform(180, 255) + rng.normal(0, 6, mask.shape)).clip(0, 255)
            _png(root / label / f"{i:03d}.png", pixels.astype(np.uint8))
    return root


MAKERS = {"shapes": shapes, "patches": patches, "strokes": strokes}


def make(name: str, root: Path) -> str:
    """The data.source of folder `name` under root (made once): the embedded source for digits."""
    if name == "digits":
        return "sklearn:digits"
    folder = root / name
    if not folder.is_dir():
        MAKERS[name](folder)
    return str(folder)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/.data/folders")
    for name in MAKERS:
        print(make(name, out))
