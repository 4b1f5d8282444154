"""What every family shares: the interface, its optimizer groups, seeded noise and class conditions.

A family is a plain nn.Module: it says how to compute its losses and draw samples; how it is trained
(the loop, the optimizer, the schedule, devices) lives in tasks/training/. The noise a family draws
while training comes from a torch.Generator handed to it, never from the global generator, so runs
side by side in one process do not disturb each other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from models.families import family as registered

# update(i, loss): one optimizer step of optimizer group i on `loss` (given by the training loop)
Update = Callable[[int, torch.Tensor], None]


@dataclasses.dataclass
class OptimizerGroup:
    """Parameters stepped by one optimizer, with the family's own settings for it."""

    params: list[nn.Parameter]
    lr_scale: float = 1.0  # times train.lr
    betas: tuple[float, float] = (0.9, 0.99)
    scheduled: bool = True  # follows train.schedule (warm-up, cosine); False: a constant rate


class GenerativeModel(nn.Module):
    """The interface every family implements.

    - `net`: the plain nn.Module whose weights are exported (safetensors).
    - `train_step(batch, update, noise)`: one optimisation step on a batch (calls `update` once per
      optimizer step it takes); returns its losses, which `training_figures` turns into the figures
      people read (only when they are logged: a small model's step is a few milliseconds).
    - `heldout_loss(batch)`: the per-batch held-out figure logged as `val_loss` (lower is better).
    - `sample(n, condition=None, seed=None)`: images as a float tensor (n, C, H, W) in [0, 1], or
      texts; `sample_batch(jobs)`: many such calls at once, each as if alone.
    """

    family: ClassVar[str] = ""
    net: nn.Module

    def __init__(self, config: dict[str, Any], data: dict[str, Any]) -> None:
        super().__init__()
        spec = registered(self.family)
        unknown = set(config) - set(spec.config_keys())
        missing = set(spec.required_keys()) - set(config)
        if unknown:
            raise ValueError(f"unknown {self.family} config keys: {', '.join(sorted(unknown))}")
        if missing:
            raise ValueError(f"{self.family} config lacks: {', '.join(sorted(missing))}")
        self.cfg = spec.config(**self.sized(config, data))
        self.data = data

    @staticmethod
    def sized(config: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """`config` with its `auto` values resolved for `data` (a family whose shape follows its data
        overrides this); `config` (dataclass of the resolved values) is what is exported."""
        return config

    @property
    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def optimizer_groups(self) -> list[OptimizerGroup]:
        return [OptimizerGroup(list(self.net.parameters()))]

    def train_step(self, batch, update: Update, noise: torch.Generator) -> dict[str, torch.Tensor]:
        """The families with one optimizer: minimise `training_loss`."""
        loss = self.training_loss(batch, noise)
        update(0, loss)
        return {"loss": loss}

    def training_loss(self, batch, noise: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def training_figures(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"train_{k}": v.detach() for k, v in losses.items()}

    def heldout_loss(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, n: int, condition=None, seed: int | None = None):
        raise NotImplementedError

    def after_training(self, x: torch.Tensor, y: torch.Tensor | None, seed: int) -> dict[str, Any]:
        """A last fit once the weights are final (the training images x in [0, 1], their class ids y):
        what the family fits better with the rest held still. Returns what it did, for the record."""
        return {}

    def sample_batch(self, jobs: list[dict]) -> list:
        """Several requests in one pass (what a server's adaptive batching hands over): each job holds
        `sample`'s arguments; job i's result equals `sample(**jobs[i])`, whatever else is in the batch."""
        return [self.sample(**job) for job in jobs]


def generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
    return g


def class_ids(condition, n: int, n_classes: int, device) -> torch.Tensor:
    """Class ids for n samples: None cycles through the classes; an int or a list of n ints picks them."""
    if condition is None:
        return torch.arange(n, device=device) % max(n_classes, 1)
    y = torch.as_tensor(condition, device=device).long().reshape(-1)
    if len(y) not in (1, n):
        raise ValueError(f"condition needs 1 or {n} class ids, got {len(y)}")
    if n_classes and ((y < 0) | (y >= n_classes)).any():
        raise ValueError(f"class ids must be in 0..{n_classes - 1}")
    return y.expand(n)
