"""A small image classifier whose penultimate layer is the feature space of image metrics.

FID uses an ImageNet Inception network; for 8x8 digits (or a user's own small images) that network is
the wrong eye and cannot be downloaded here anyway. A small CNN trained once on the dataset's own
training split gives a feature space that knows what the classes look like (the "digits FID").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Config:
    channels: int = 1
    n_classes: int = 10
    width: int = 32
    features: int = 64


class Classifier(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        w = cfg.width
        self.body = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),  # (H/2, W/2)
            nn.ReLU(),
            nn.Conv2d(2 * w, cfg.features, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (B, features)
        )
        self.head = nn.Linear(cfg.features, cfg.n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> (B, features)."""
        return self.body(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # class logits
