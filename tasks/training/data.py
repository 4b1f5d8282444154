"""The dataset on the training device, and batches that depend only on (seed, epoch, step, rank).

Small datasets live on the accelerator as tensors: the loader yields only a position in the epoch,
and the batch is gathered on the device from indices drawn by a seeded generator, so there is no
per-batch DataLoader work, no host-to-device copy and no worker processes. A run resumed from a
checkpoint therefore draws exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from models.common import generator


class _Gather(Dataset):
    """dataset[index tensor] -> a whole batch gathered on the device."""

    def __init__(self, fetch) -> None:
        self.fetch = fetch

    def __getitem__(self, index):
        return self.fetch(index)

    def __len__(self) -> int:  # pragma: no cover - DataLoader never asks with a sampler of keys
        return 0


class DeviceData(pl.LightningDataModule):
    """The training-ready arrays of data/processed, moved to the training device once.

    Images: x uint8 (N, C, H, W) -> float in [0, 1], y int64. Text: a 1-D array of character ids,
    served as random windows of `block_size + 1` (train) or consecutive windows (val).
    """

    def __init__(
        self,
        kind: str,
        splits: dict[str, tuple[np.ndarray, np.ndarray | None]],
        batch_size: int,
        seed: int,
        steps_per_epoch: int | None = None,
        block_size: int = 0,
        val_batches: int | None = None,
        steps_per_execution: int = 1,
    ) -> None:
        super().__init__()
        self.kind, self.batch_size, self.seed = kind, batch_size, seed
        self.steps_per_execution = steps_per_execution
        self.block_size, self.val_batches = block_size, val_batches
        self.cpu = {k: (torch.from_numpy(np.ascontiguousarray(x)), None if y is None else torch.from_numpy(y))
                    for k, (x, y) in splits.items()}  # fmt: skip
        self.steps_per_epoch = steps_per_epoch
        self.dev: dict = {}
        self._drawn: tuple[int, list] = (-1, [])

    def setup(self, stage: str | None = None) -> None:
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        self.rank = self.trainer.global_rank if self.trainer else 0
        self.world = self.trainer.world_size if self.trainer else 1
        for name, (x, y) in self.cpu.items():
            x = x.to(device).long() if self.kind == "text" else x.to(device)
            self.dev[name] = (x, None if y is None else y.to(device))
        n = len(self.cpu["train"][0])
        if self.steps_per_epoch is None:  # one pass over the training set per epoch, split over ranks
            self.steps_per_epoch = (
                max(1, n // (self.batch_size * self.world)) if self.kind == "image" else 100
            )

    def _images(self, split: str, index: torch.Tensor):
        x, y = self.dev[split]
        index = index.to(x.device)
        return x[index].float().div_(255.0), y[index]

    def _windows(self, split: str, offsets: torch.Tensor):
        data = self.dev[split][0]
        idx = offsets.to(data.device)[:, None] + torch.arange(self.block_size + 1, device=data.device)
        chunk = data[idx]  # (B, T + 1)
        return chunk[:, :-1], chunk[:, 1:]

    def train_batch(self, epoch: int, step: int):
        """Batch `step` of `epoch` for this rank: (x, y) on the device."""
        if self._drawn[0] != epoch:
            self._drawn = (epoch, self._draw_train(epoch))
        return self.batch("train", self._drawn[1][step])

    def steps_of(self, position: int) -> range:
        """The optimizer steps of the epoch that Lightning step `position` runs."""
        k = self.steps_per_execution
        return range(position * k, min((position + 1) * k, self.steps_per_epoch))

    def batch(self, split: str, key: torch.Tensor):
        """Gather one batch of `split` on the device: image indices or text window offsets."""
        return self._images(split, key) if self.kind == "image" else self._windows(split, key)

    def _draw_train(self, epoch: int) -> list[torch.Tensor]:
        """The epoch's batch keys, drawn on the CPU (the same on every device) and copied to the device in
        one go: a per-step copy from pageable memory would wait for the GPU to finish the previous step,
        so the host could never run ahead and queue the next one."""
        g = generator(self.seed * 1_000_003 + epoch)
        n, b, world = len(self.cpu["train"][0]), self.batch_size, self.world
        if self.kind == "image":
            perm = torch.cat(
                [torch.randperm(n, generator=g) for _ in range(-(-self.steps_per_epoch * b * world // n))]
            )
            keys = perm[: self.steps_per_epoch * world * b].view(self.steps_per_epoch, world, b)
        else:
            high = n - self.block_size - 1
            keys = torch.randint(0, high, (self.steps_per_epoch, world, b), generator=g)
        return list(keys[:, self.rank].to(self.dev["train"][0].device))

    def train_dataloader(self) -> DataLoader:
        # Positions only: Lightning step `position` runs optimizer steps steps_of(position), each asking
        # train_batch(epoch, step) for its data (see tasks/training/module.py: training_step).
        executions = -(-self.steps_per_epoch // self.steps_per_execution)
        # its own generator: creating an epoch's iterator then draws nothing from torch's global one
        return DataLoader(range(executions), batch_size=None, generator=torch.Generator())

    def val_keys(self) -> list[torch.Tensor]:
        n, b = len(self.cpu["val"][0]), self.batch_size
        if self.kind == "image":
            keys = [torch.arange(i, min(i + b, n)) for i in range(0, n, b)]
        else:
            starts = torch.arange(0, n - self.block_size - 1, self.block_size)
            keys = list(starts.split(b))
        keys = keys[self.rank :: self.world]
        return keys[: self.val_batches] if self.val_batches else keys

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            _Gather(lambda key: self.batch("val", key)),
            sampler=self.val_keys(),
            batch_size=None,
            generator=torch.Generator(),
        )
