"""A model family under Lightning: optimizers, schedule, the optimisation loop and validation.

Optimisation is manual (Lightning's public `automatic_optimization = False` API) so that one Lightning
step can run several optimizer steps (train.steps_per_execution): Lightning's own work per step (its
loops, hooks, progress and logging bookkeeping, about 0.15 ms) is then paid once for all of them, which
matters when a model's step takes a few milliseconds.

Randomness follows the optimizer step, never the grouping or an interruption: a batch depends on
(seed, epoch, step, rank) (tasks/training/data.py); the noise a family draws comes from `self.noise`,
a generator seeded per optimizer step; dropout, which only draws from torch's global generator, gets
it seeded at the first step of each epoch. A run resumed from an epoch's checkpoint therefore ends with the
weights of an uninterrupted one, and grouping steps changes no weight (tests prove both).
"""

from __future__ import annotations

import dataclasses
import math

import pytorch_lightning as pl
import torch

from models.common import GenerativeModel, OptimizerGroup


@dataclasses.dataclass
class Optim:
    """Optimizer settings from train.* in params.yaml."""

    lr: float
    weight_decay: float
    warmup_steps: int
    schedule: str  # cosine | constant
    grad_clip: float  # 0 = off
    seed: int


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine down to 10% at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def seed_of(seed: int, count: int, rank: int = 0) -> int:
    """The seed of draw number `count` (an optimizer step, an epoch) on process `rank` of a run."""
    return seed * 1_000_003 + count * 7919 + rank


def _listed(x) -> list:
    return list(x) if isinstance(x, list | tuple) else [x]


class Trainee(pl.LightningModule):
    def __init__(self, model: GenerativeModel, optim: Optim) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        self.automatic_optimization = False
        self.noise: torch.Generator | None = None
        self.fingerprint = ""  # of params, data and code: saved in each checkpoint, checked on resume
        self.precision = ""  # what train.precision resolved to: saved too, so a resumed run keeps it
        self.steps_done = 0  # optimizer steps (batches) of the run so far
        self._optimizers: list = []
        self._schedulers: list = []  # per optimizer: its scheduler or None

    # --- optimizers -----------------------------------------------------------------------------
    def decay_groups(self, group: OptimizerGroup) -> list[dict]:
        """Weight decay on matrices only (not biases or norms), as in GPT-2 / nanoGPT."""
        params = [p for p in group.params if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.optim.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    def total_steps(self) -> int:
        """Optimizer steps of the whole run (the length of the schedule); not Lightning's estimate,
        which counts Lightning steps (train.steps_per_execution updates each)."""
        return self.trainer.max_epochs * self.trainer.datamodule.steps_per_epoch

    def configure_optimizers(self):
        # Fused AdamW: one kernel for the whole update. Not under fp16 loss scaling, where the gradients
        # must be unscaled before clipping (bf16 and fp32 need no scaler).
        fused = self.device.type == "cuda" and not str(self.trainer.precision).startswith("16")
        total, optimizers, schedulers = self.total_steps(), [], []
        for group in self.model.optimizer_groups():
            opt = torch.optim.AdamW(
                self.decay_groups(group), lr=self.optim.lr * group.lr_scale, betas=group.betas, fused=fused
            )
            optimizers.append(opt)
            if group.scheduled:
                o = self.optim
                factor = lambda step, o=o: lr_factor(step, o.warmup_steps, total, o.schedule)  # noqa: E731
                schedulers.append(
                    {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}
                )
        return optimizers, schedulers

    def on_train_start(self) -> None:
        self.noise = torch.Generator(device=self.device)
        self._optimizers = _listed(self.optimizers())
        by_optimizer = {id(s.optimizer): s for s in _listed(self.lr_schedulers() or [])}
        self._schedulers = [by_optimizer.get(id(o.optimizer)) for o in self._optimizers]
        # The direct path, for one process without loss scaling: Lightning's manual_backward and
        # LightningOptimizer.step would only dispatch hooks around torch's backward and step (~0.07 ms, 3%
        # of a small model's step), so torch's own run, and Lightning steps the first update of each of
        # its steps (which its step counter, trainer.global_step, then counts: the checkpoints need it to
        # move). Under DDP (gradient averaging in backward) or fp16 (loss scaling) every update goes
        # through Lightning.
        self._direct = self.trainer.world_size == 1 and not str(self.trainer.precision).startswith("16")
        self._counted = False

    def seed_dropout(self) -> None:
        """Seed torch's global generator, which dropout draws from (the one draw without a generator
        argument), per (seed, epoch, rank): at the epoch's first step, after Lightning's own set-up of the
        epoch, so a resumed run continues exactly as the uninterrupted one. Cheaper than
        torch.manual_seed, which also queues seeds for every other backend."""
        seed = seed_of(self.optim.seed, self.current_epoch, self.global_rank)
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["fingerprint"] = self.fingerprint
        checkpoint["precision"] = self.precision

    # --- the loop -------------------------------------------------------------------------------
    def training_step(self, position, batch_idx: int) -> None:
        data, epoch = self.trainer.datamodule, self.current_epoch
        if batch_idx == 0:
            self.seed_dropout()
        self._counted = False
        model, noise, seed, rank = self.model, self.noise, self.optim.seed, self.global_rank
        steps = data.steps_of(int(position))
        for step in steps:
            index = epoch * data.steps_per_epoch + step  # the optimizer step of the run
            noise.manual_seed(seed_of(seed, index, rank))
            losses = model.train_step(data.train_batch(epoch, step), self.update, noise)
        self.steps_done = epoch * data.steps_per_epoch + steps.stop
        if self.logging_step(batch_idx):  # in the units people read, only when written
            self.log_dict(model.training_figures(losses), prog_bar=True, batch_size=data.batch_size)

    def update(self, index: int, loss: torch.Tensor) -> None:
        """One step of optimizer `index` on `loss` (what a family's train_step calls), clipped first."""
        opt = self._optimizers[index]
        opt.zero_grad(set_to_none=True)
        if not self._direct:
            self.manual_backward(loss)
            opt.step()  # clipping in on_before_optimizer_step, after fp16's unscaling
        else:
            loss.backward()
            self.clip(opt.optimizer)
            if self._counted:
                opt.optimizer.step()
            else:
                opt.step()
                self._counted = True
        if self._schedulers[index] is not None:
            self._schedulers[index].step()

    def on_before_optimizer_step(self, optimizer) -> None:
        if not self._direct:
            self.clip(optimizer)

    def clip(self, optimizer) -> None:
        if self.optim.grad_clip:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.optim.grad_clip)

    def logging_step(self, batch_idx: int) -> bool:
        """Log training figures only on the Lightning steps whose figures the logger writes (every
        `log_every_n_steps`): each self.log costs about half a millisecond of Lightning bookkeeping, as
        much as a whole step of a small model."""
        done = self.current_epoch * self.trainer.num_training_batches + batch_idx + 1
        return done % self.trainer.log_every_n_steps == 0

    def validation_step(self, batch, batch_idx: int) -> None:
        loss = self.model.heldout_loss(batch)
        self.log("val_loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch[0]))
