"""How an image family's shape follows its images when params.yaml says `auto`: the number of stride-2
stages, their widths and the latent size, from the images' size and channel count alone.

The rules were measured on the folders of bench/quality.py --folders (8x8 digits, 16x16 shapes, 28x28
strokes, 32x32 colour patches): the stages bring the smaller side down to about 4 pixels (never fewer
than 2 stages), each doubles the width up to 256, and the latent grows with the square root of the
number of values an image holds.
"""

from __future__ import annotations

import math

BASE_WIDTH = 32  # of the first stage
MAX_WIDTH = 256
MIN_LATENT, MAX_LATENT = 32, 128


def stages(height: int, width: int) -> int:
    """Stride-2 stages for an image of this size: 8 -> 2, 16 -> 2, 28 and 32 -> 3, 64 -> 4."""
    return max(2, round(math.log2(max(min(height, width), 4) / 4)))


def widths(shape: tuple[int, int, int]) -> list[int]:
    """The widths of the stages, doubling from BASE_WIDTH: [32, 64] for 16x16, [32, 64, 128] for 32x32."""
    _, height, width = shape
    return [min(BASE_WIDTH * 2**i, MAX_WIDTH) for i in range(stages(height, width))]


def latent_dim(shape: tuple[int, int, int]) -> int:
    """32 up to 16x16 grey (256 values), then growing with the square root of the values, in steps of 16:
    64 for 28x28 grey, 96 for 32x32 colour, 128 at most."""
    values = math.prod(shape)
    grown = 16 * round(2 * math.sqrt(values / 256))
    return int(min(max(grown, MIN_LATENT), MAX_LATENT))


def padded(side: int, n_stages: int) -> int:
    """`side` rounded up to what n stride-2 stages divide: the model pads images to it and crops back."""
    step = 2**n_stages
    return -(-side // step) * step
