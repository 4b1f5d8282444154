"""Pictures people read: grids headed by their class names, rows named, blocks side by side."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tasks.core.pictures import save_grid, save_side_by_side


def test_a_grid_carries_its_column_and_row_names(tmp_path) -> None:
    images = np.random.default_rng(0).random((6, 1, 8, 8)).astype(np.float32)
    plain = Image.open(save_grid(images, tmp_path / "plain.png", cols=3))
    named = Image.open(
        save_grid(images, tmp_path / "named.png", 3, ["circle", "square", "triangle"], ["a", "b"])
    )
    assert named.height > plain.height and named.width > plain.width  # room for the names
    header = np.asarray(named)[: named.height - plain.height]
    assert (header < 128).any()  # dark text drawn on the white header strip
    assert np.array_equal(np.asarray(named)[-plain.height :, -plain.width :], np.asarray(plain))


def test_blocks_side_by_side_share_their_columns(tmp_path) -> None:
    rng = np.random.default_rng(1)
    blocks = {name: rng.random((8, 3, 8, 8)).astype(np.float32) for name in ("real", "model", "baseline")}
    picture = Image.open(save_side_by_side(blocks, tmp_path / "compare.png", 4, ["a", "b", "c", "d"]))
    one = Image.open(save_grid(blocks["real"], tmp_path / "one.png", 4))
    assert picture.mode == "RGB" and picture.height > 3 * one.height
