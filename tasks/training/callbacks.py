"""What a training run shows and checks besides learning: sample pictures as it goes, a progress bar in
optimizer steps, equal replicas under DDP, and threads that follow the machine's plan for its cores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

import models
from models import cores
from tasks.core.errors import GenloopError


class FollowCores(pl.Callback):
    """Between Lightning steps, this process's threads follow the plan for the machine's cores
    (models/cores.py): fewer when another process starts doing math, all again when it ends."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        cores.follow()

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx: int, *_: Any) -> None:
        cores.follow()


class SampleWriter(pl.Callback):
    """Every N epochs (and at the end): a sample grid (PNG) or sample text, for a look while it trains."""

    def __init__(self, every: int, folder: Path, live: Any = None) -> None:
        self.every, self.folder, self.live = every, folder, live

    def on_train_epoch_end(self, trainer, module) -> None:
        epoch = trainer.current_epoch + 1
        if self.every and epoch % self.every == 0 and trainer.is_global_zero:
            write_samples(module.model, self.folder, f"epoch_{epoch:04d}", self.live)

    def on_train_end(self, trainer, module) -> None:
        if trainer.is_global_zero:
            write_samples(module.model, self.folder, "final", self.live)


def write_samples(model, folder: Path, name: str, live: Any = None) -> Path:
    """Fixed seed, so successive pictures show the model changing, not the noise."""
    from tasks.core.pictures import column_names, columns, save_grid

    was = model.training
    model.eval()
    try:
        if "text" in models.family(model.family).pictures:
            texts = model.sample(4, seed=0, length=300)
            path = folder / f"{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n\n----\n\n".join(texts) + "\n")
        else:
            cols = columns(model)
            images = model.sample(cols * 8, seed=0).cpu().numpy()
            path = save_grid(images, folder / f"{name}.png", cols, column_names(model))
            if live is not None:
                live.log_image("samples.png", str(path))
    finally:
        model.train(was)
    return path


class StepProgressBar(pl.callbacks.TQDMProgressBar):
    """Lightning's bar over the whole run, in optimizer steps (a Lightning step runs
    train.steps_per_execution of them), so that it says how long is left for all of it; validation and
    the sanity check have no bar of their own (their loss shows on this one)."""

    def init_validation_tqdm(self):
        from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

        return Tqdm(disable=True)

    init_sanity_tqdm = init_validation_tqdm

    def on_train_start(self, trainer, *_: Any) -> None:
        import sys

        from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

        per_epoch = trainer.datamodule.steps_per_epoch  # a resumed run starts at the steps done before
        self.train_progress_bar = Tqdm(
            desc="train", total=per_epoch * trainer.max_epochs, initial=per_epoch * trainer.current_epoch,
            disable=self.is_disabled, leave=True, dynamic_ncols=True, file=sys.stdout, smoothing=0,
            bar_format=self.BAR_FORMAT,
        )  # fmt: skip

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        epoch = f"{trainer.current_epoch + 1}/{trainer.max_epochs}"
        self.train_progress_bar.set_description(f"train, epoch {epoch}")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        per_epoch = trainer.datamodule.steps_per_epoch
        done = per_epoch * trainer.current_epoch + trainer.datamodule.steps_of(batch_idx).stop
        bar = self.train_progress_bar
        if bar is not None and self._should_update(done, bar.total):
            bar.n = done
            bar.set_postfix(self.get_metrics(trainer, module))

    def on_train_epoch_end(self, trainer, module) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, module))

    def get_metrics(self, trainer, module) -> dict:
        metrics = super().get_metrics(trainer, module)
        metrics.pop("v_num", None)  # the logger's run name, not a figure
        return metrics


class ReplicaCheck(pl.Callback):
    """Under DDP every process must end with the same weights; if gradient averaging ever missed a step,
    the replicas drift apart silently and rank 0 would export only its own. Fail loudly instead."""

    def on_train_end(self, trainer, module) -> None:
        import torch

        if trainer.world_size < 2:
            return
        sums = torch.stack([p.detach().double().sum() for p in module.model.net.parameters()])
        gathered = module.all_gather(sums)  # (world, parameters)
        if not torch.allclose(gathered, gathered[0].expand_as(gathered), rtol=1e-6, atol=1e-9):
            raise GenloopError(
                "train: the DDP replicas ended with different weights (gradients not averaged)"
            )
