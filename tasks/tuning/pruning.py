"""Optuna pruning inside Lightning training: report each epoch's validation loss to the trial, and stop
the run when the pruner says it lags.

optuna-integration's PyTorchLightningPruningCallback imports `lightning.pytorch`, and this project
trains with the `pytorch_lightning` package (the same code under another name, whose classes a
`lightning.pytorch` callback does not accept). These few lines do the same job for the package in use,
and keep the two Lightning namespaces from both being installed and imported."""

from __future__ import annotations

import math

import optuna
import pytorch_lightning as pl

from tasks.core.errors import GenloopError


class TrialPruning(pl.Callback):
    def __init__(self, trial: optuna.Trial, monitor: str = "val_loss") -> None:
        self.trial, self.monitor = trial, monitor
        self.epochs = 0  # validations reported: the epochs this trial ran

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        epoch = trainer.current_epoch
        self.epochs = epoch + 1
        if not math.isfinite(value):  # diverged: a failed trial, with its reason, not a pruned one
            raise GenloopError(f"{self.monitor} is {value} at epoch {epoch + 1}: training diverged")
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: {self.monitor} {value:.4g}")
