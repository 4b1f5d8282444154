"""Pictures: a PNG's pixels as the stages read them, and sample grids as PNG for people (numpy + Pillow)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def read_pixels(path: str | Path) -> np.ndarray:
    """A PNG's pixels as validate checks them and augment stores them: (H, W) grey or (H, W, C) with the
    channels of its mode. A palette image becomes its colours (RGB, or RGBA when it has transparency),
    a 1-bit one grey 0 / 255; a 16-bit one keeps its values, which validate then refuses as not 8-bit."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # decodes every byte: a truncated file fails here
        if img.mode in ("P", "PA"):
            img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
        elif img.mode == "1":
            img = img.convert("L")
        return np.asarray(img)


def columns(model) -> int:
    """Columns of a model's sample grid: one per class, or 8 for a model without classes."""
    return len(model.data.get("classes") or []) or 8


def grid(images: np.ndarray, cols: int | None = None, scale: int = 4, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> one uint8 image (rows x cols tiles, grey or RGB)."""
    n, c, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 0.25, dtype=np.float32)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        canvas[y : y + h, x : x + w] = img.transpose(1, 2, 0)
    canvas = np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8)
    canvas = canvas.repeat(scale, 0).repeat(scale, 1)
    return canvas[..., 0] if c == 1 else canvas


def save_grid(images: np.ndarray, path: str | Path, cols: int | None = None) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = cols or math.ceil(math.sqrt(len(images)))
    scale = max(1, 640 // ((images.shape[3] + 1) * cols))  # about 640 px wide
    Image.fromarray(grid(images, cols, scale=scale)).save(path)
    return path
