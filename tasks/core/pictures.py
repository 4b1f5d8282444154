"""Pictures: a PNG's pixels as the stages read them, and sample grids as PNG for people (numpy + Pillow).

Grids carry their names: a column per class is headed by the class, a row by what it shows, so a
picture can be read without the code that drew it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

BACKGROUND = 0.25  # between tiles: grey, so black and white images both stand out
WIDTH = 640  # pixels, about, of a saved grid


def _scale(width: int, cols: int) -> int:
    """Pixels per image pixel for `cols` tiles `width` wide (plus padding) to fill about WIDTH."""
    return max(1, WIDTH // ((width + 1) * cols))


def _paper(mode: str):
    """White, in a PIL image mode's terms: where names are written."""
    return 255 if mode == "L" else (255,) * 3


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


def column_names(model) -> list[str] | None:
    """The class names heading a model's sample grid (None for a model without classes)."""
    return [str(c) for c in model.data.get("classes") or []] or None


def grid(images: np.ndarray, cols: int | None = None, scale: int = 4, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> one uint8 image (rows x cols tiles, grey or RGB)."""
    n, c, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), BACKGROUND, dtype=np.float32)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        canvas[y : y + h, x : x + w] = img.transpose(1, 2, 0)
    canvas = np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8)
    canvas = canvas.repeat(scale, 0).repeat(scale, 1)
    return canvas[..., 0] if c == 1 else canvas


def labelled(
    tiles: np.ndarray,
    cell: tuple[int, int],
    col_names: list[str] | None = None,
    row_names: list[str] | None = None,
):  # -> PIL.Image
    """A grid image (from `grid`) with its columns headed and its rows named; `cell` is one tile's
    (height, width) with its padding, in pixels of `tiles`."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(tiles)
    if not col_names and not row_names:
        return img
    font = ImageFont.load_default(size=11)
    measure = ImageDraw.Draw(img)
    left = max((measure.textlength(n, font=font) for n in row_names or []), default=0)
    left = int(left) + 8 if row_names else 0
    top = 16 if col_names else 0
    canvas = Image.new(img.mode, (img.width + left, img.height + top), color=_paper(img.mode))
    canvas.paste(img, (left, top))
    draw = ImageDraw.Draw(canvas)
    ink = 0 if img.mode == "L" else (0, 0, 0)
    h, w = cell
    for i, name in enumerate(col_names or []):
        while len(name) > 1 and draw.textlength(name, font=font) > w:  # too long for its column: cut
            name = name[:-2] + "…"
        draw.text((left + i * w + w / 2, 2), name, fill=ink, font=font, anchor="mt")
    for i, name in enumerate(row_names or []):
        draw.text((left - 4, top + i * h + h / 2), name, fill=ink, font=font, anchor="rm")
    return canvas


def save_grid(
    images: np.ndarray,
    path: str | Path,
    cols: int | None = None,
    col_names: list[str] | None = None,
    row_names: list[str] | None = None,
) -> Path:
    """Save images (N, C, H, W) in [0, 1] as one PNG about 640 px wide, columns and rows named."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = cols or math.ceil(math.sqrt(len(images)))
    h, w = images.shape[2:]
    scale = _scale(w, cols)
    tiles = grid(images, cols, scale=scale)
    labelled(tiles, ((h + 1) * scale, (w + 1) * scale), col_names, row_names).save(path)
    return path


def save_side_by_side(
    blocks: dict[str, np.ndarray], path: str | Path, cols: int, col_names: list[str] | None
) -> Path:
    """Several grids of the same shape one above the other, each named (e.g. real test images, the
    model's samples, the baseline's), columns headed once."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = next(iter(blocks.values()))
    h, w = first.shape[2:]
    scale = _scale(w, cols)
    rows_each = math.ceil(len(first) / cols)
    parts = []
    for i, (name, images) in enumerate(blocks.items()):
        tiles = grid(images, cols, scale=scale)
        names = [name] + [""] * (rows_each - 1)
        parts.append(
            labelled(tiles, ((h + 1) * scale, (w + 1) * scale), col_names if i == 0 else None, names)
        )
    width = max(p.width for p in parts)
    canvas = Image.new(
        parts[0].mode,
        (width, sum(p.height for p in parts) + 6 * (len(parts) - 1)),
        color=_paper(parts[0].mode),
    )
    y = 0
    for p in parts:
        canvas.paste(p, (width - p.width, y))
        y += p.height + 6
    canvas.save(path)
    return path
