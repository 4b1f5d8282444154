"""What every family shares: the interface, on-device data, deterministic batches, the optimizer.

Small datasets live on the accelerator as tensors: the loader yields only a position in the epoch,
and the batch is gathered on the device from indices drawn by a seeded generator, so there is no
per-batch DataLoader work, no host-to-device copy and no worker processes. Randomness depends only on
(seed, epoch, step, rank), so a run resumed from a checkpoint replays exactly what an uninterrupted run
would have done.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset


@dataclasses.dataclass
class Optim:
    """Optimizer settings handed over by the trainer (train.* in params.yaml)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant
    grad_clip: float = 0.0
    seed: int = 1337


class GenerativeModel(pl.LightningModule):
    """The interface every family implements.

    - `net`: the plain nn.Module whose weights are exported (safetensors).
    - `sample(n, condition=None, seed=None)`: images as a float tensor (n, C, H, W) in [0, 1], or texts;
      `sample_batch(jobs)`: many such calls at once.
    - `heldout_loss(batch)`: the per-batch held-out figure `evaluate` compares across versions
      (lower is better); logged as `val_loss` during training.
    """

    family: str = ""
    Config: type = object

    def __init__(self, config: dict[str, Any], data: dict[str, Any]) -> None:
        super().__init__()
        self.automatic_optimization = False  # see training_step
        fields = {f.name for f in dataclasses.fields(self.Config)}
        unknown = set(config) - fields
        if unknown:
            raise ValueError(f"unknown {self.family} config keys: {', '.join(sorted(unknown))}")
        self.cfg = self.Config(**config)
        self.data = data
        self.optim = Optim()

    @property
    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)

    # --- optimisation ----------------------------------------------------------------------
    def param_groups(self, params) -> list[dict]:
        """Weight decay on matrices only (not biases or norms), as in GPT-2 / nanoGPT."""
        params = [p for p in params if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.optim.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    def make_optimizer(self, params, lr: float | None = None) -> torch.optim.Optimizer:
        # Fused AdamW: one kernel for the whole update. Not under fp16 loss scaling, where the gradients
        # must be unscaled before clipping (bf16 and fp32 need no scaler).
        precision = str(getattr(self._trainer, "precision", "")) if self._trainer else ""
        fused = self.device.type == "cuda" and not precision.startswith("16")
        return torch.optim.AdamW(
            self.param_groups(params), lr=lr or self.optim.lr, betas=self.optim.betas, fused=fused
        )

    def on_before_optimizer_step(self, optimizer) -> None:
        # Lightning calls this inside each optimizer step, after 16-mixed has unscaled the gradients.
        if self.optim.grad_clip:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.optim.grad_clip)

    def lr_lambda(self, total_steps: int):
        warmup, schedule = self.optim.warmup_steps, self.optim.schedule

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if schedule == "constant" or total_steps <= warmup:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))  # cosine down to 10%

        return factor

    def configure_optimizers(self):
        opt = self.make_optimizer(self.net.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_lambda(self.total_steps()))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def total_steps(self) -> int:
        """Optimizer steps the whole run will take (the length of the learning-rate schedule); not
        Lightning's estimate, which counts Lightning steps (train.steps_per_execution updates each)."""
        return self.trainer.max_epochs * self.trainer.datamodule.steps_per_epoch

    def training_loss(self, batch) -> torch.Tensor:
        """The scalar minimised by one optimizer step (the families with one optimizer)."""
        raise NotImplementedError

    def train_batch(self, step: int):
        """Batch `step` of this epoch, a function of (epoch, step) only, decided here where Lightning's
        epoch counter is certain (also right after a resume)."""
        # Dropout and sampling noise draw from the global RNG: seed it per (optimizer step, rank), so a
        # resumed run matches an uninterrupted one without saving RNG state.
        # Only the generators this step uses: torch.manual_seed would also queue lazy seeds for every
        # other backend with a captured stack trace, ~1.5 ms a step on a CPU-only build.
        seed = self.optim.seed * 1_000_003 + self.global_step * 7919 + self.global_rank
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)  # CUDA is initialised here, so this applies at once
        return self.trainer.datamodule.train_batch(self.current_epoch, step)

    # Optimisation is manual so that one Lightning step can run several optimizer steps
    # (train.steps_per_execution): Lightning's own work per step (hooks, loops, progress) is paid once
    # for all of them, which matters when a model's step takes a few milliseconds.
    def training_step(self, position, batch_idx: int) -> None:
        for step in self.trainer.datamodule.steps_of(int(position)):
            figures = self.optimisation_step(step)
        if self.logging_step():
            self.log_dict(figures, prog_bar=True, batch_size=self.trainer.datamodule.batch_size)

    def optimisation_step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimizer update on batch `step`; returns the figures to log. Gradient clipping happens in
        on_before_optimizer_step; manual_backward keeps DDP's gradient averaging and 16-mixed's scaling."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        loss = self.training_loss(self.train_batch(step))
        opt.zero_grad(set_to_none=True)
        self.backward_and_step(loss, opt)
        sched.step()
        return {"train_loss": loss}

    def backward_and_step(self, loss: torch.Tensor, opt) -> None:
        """Backward and one update of `opt` (a LightningOptimizer), gradients clipped in between.

        With one process and no loss scaling, Lightning's layers around backward and step only call
        hooks (~0.1 ms, 3% of a small model's step): run torch's directly then, and count the step
        through the optimizer's own progress hooks so global_step stays the number of updates.
        Under DDP or 16-mixed, Lightning's path averages gradients and scales the loss."""
        trainer = self.trainer
        if trainer.world_size > 1 or str(trainer.precision).startswith("16"):
            self.manual_backward(loss)
            opt.step()
        else:  # what Lightning's step does for one process, without the hook dispatch
            loss.backward()
            opt._on_before_step()
            self.on_before_optimizer_step(opt)
            opt.optimizer.step()
            opt._on_after_step()

    def logging_step(self) -> bool:
        """Log training figures only when Lightning writes them (every `log_every_n_steps`): each self.log
        costs about half a millisecond of Lightning bookkeeping, as much as a whole step of a small model."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log(
            "val_loss", self.heldout_loss(batch), prog_bar=True, sync_dist=True, batch_size=len(batch[0])
        )

    def heldout_loss(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, n: int, condition=None, seed: int | None = None):
        raise NotImplementedError

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


# --- data on the device -------------------------------------------------------------------------
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
        # train_batch(epoch, step) for its data (see GenerativeModel.training_step).
        executions = -(-self.steps_per_epoch // self.steps_per_execution)
        return DataLoader(range(executions), batch_size=None)

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
            _Gather(lambda key: self.batch("val", key)), sampler=self.val_keys(), batch_size=None
        )
