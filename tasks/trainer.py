"""Wiring for training: data module, model, Lightning Trainer, callbacks, resume and export.

Imports torch / lightning / numpy / pydantic (and dvclive when live metrics are on), not Prefect, so
the same path runs on a bare GPU box for benchmarks. tasks/train.py is the stage around it (imported
lazily by it, so `genloop stage collect` never loads torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl

import models
from tasks import paths
from tasks.errors import GenloopError
from tasks.params import ModelParams, TrainParams

TRAIN = paths.ARTIFACTS / "train"
CHECKPOINTS = TRAIN / "checkpoints"
EXPORT = TRAIN / "model"
SAMPLES = TRAIN / "samples"
LIVE = TRAIN / "live"
METRICS = TRAIN / "metrics.json"
# Training figures are logged about every this many optimizer steps: a self.log costs ~0.5 ms.
LOG_EVERY = 50


def load_splits(processed: Path, names: tuple[str, ...] = ("train", "val")) -> tuple[dict, dict]:
    """(meta.json, {split: (x, y)}) from data/processed; y is None for text."""
    meta_path = processed / "meta.json"
    if not meta_path.is_file():
        raise GenloopError(f"{meta_path} not found: run the data stages first (dvc repro augment)")
    meta = json.loads(meta_path.read_text())
    if meta["kind"] == "image":
        splits = {s: (np.load(processed / f"{s}_x.npy"), np.load(processed / f"{s}_y.npy")) for s in names}
    else:
        splits = {s: (np.load(processed / f"{s}.npy"), None) for s in names}
    return meta, splits


def data_description(meta: dict) -> dict:
    if meta["kind"] == "image":
        return {"kind": "image", "shape": meta["shape"], "classes": meta["classes"]}
    return {"kind": "text", "vocab": meta["vocab"]}


def build_model(model_params: ModelParams, train: TrainParams, meta: dict):
    if models.KIND[model_params.family] != meta["kind"]:
        raise GenloopError(
            f"model.family {model_params.family} models {models.KIND[model_params.family]} data, "
            f"but data/processed holds {meta['kind']} (from {meta.get('source')})"
        )
    try:
        model = models.build(model_params.family, model_params.family_config(), data_description(meta))
    except (ValueError, AssertionError) as err:
        raise GenloopError(f"model.{model_params.family}: {err}") from None
    model.optim = models.common.Optim(
        lr=train.lr,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_steps,
        schedule=train.schedule,
        grad_clip=train.grad_clip,
        seed=train.seed,
    )
    if train.init_from:
        init_from(model, train.init_from)
    return model


def init_from(model, source: str) -> None:
    """Fine-tune from an exported model folder or a registered version (`genloop-gpt:champion`,
    `genloop-gpt:<version>`): same family, same data layout (shape or vocabulary)."""
    folder = Path(source)
    if not folder.exists() and ":" in source:
        from tasks import registry

        folder = registry.resolve(source)
    try:
        d = models.describe(folder)
    except FileNotFoundError as err:
        raise GenloopError(f"train.init_from: {err}") from None
    if d["family"] != model.family:
        raise GenloopError(f"train.init_from: {folder} holds a {d['family']} model, not a {model.family}")
    try:
        models.load_weights(model.net, folder / models.WEIGHTS)
    except RuntimeError as err:
        raise GenloopError(
            f"train.init_from: {folder} does not fit this model's shape ({config_changes(model, d)}): "
            f"{str(err).splitlines()[0]}"
        ) from None


def config_changes(model, described: dict) -> str:
    """What differs between an exported model's config and this run's model.<family> section."""
    import dataclasses

    try:  # through the dataclass: an older export lacks the keys added since, which take their defaults
        theirs = dataclasses.asdict(model.Config(**described["config"]))
    except TypeError:
        return "config or data differ"
    changes = [f"{k}: {theirs[k]} there, {v} here" for k, v in model.config.items() if theirs.get(k) != v]
    if not changes:
        return "same config, different data: vocabulary or image shape"
    return f"model.{model.family} differs, " + "; ".join(changes)


def fingerprint(model_params: ModelParams, train: TrainParams, meta: dict) -> str:
    """What a checkpoint must match to be resumed: model config, training params, data, model code."""
    code = {p.name: p.read_bytes().decode() for p in sorted(Path(models.__file__).parent.glob("*.py"))}
    blob = json.dumps(
        {"model": model_params.model_dump(), "train": train.model_dump(), "data": meta, "code": code},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def resolve_precision(train: TrainParams) -> str:
    import torch

    if train.precision != "auto":
        return train.precision
    on_gpu = train.accelerator in ("gpu", "cuda") or (
        train.accelerator == "auto" and torch.cuda.is_available()
    )
    return "bf16-mixed" if on_gpu else "32-true"


def make_data(meta: dict, splits: dict, model, train: TrainParams):
    from models.common import DeviceData

    block = model.cfg.block_size if meta["kind"] == "text" else 0
    return DeviceData(
        meta["kind"],
        splits,
        batch_size=train.batch_size,
        seed=train.seed,
        steps_per_epoch=train.steps_per_epoch,
        block_size=block,
        val_batches=train.val_batches,
        steps_per_execution=train.steps_per_execution,
    )


class SampleWriter(pl.Callback):
    """Every N epochs (and at the end): a sample grid (PNG) or sample text, for a look while it trains."""

    def __init__(self, every: int, folder: Path, live: Any = None) -> None:
        self.every, self.folder, self.live = every, folder, live

    def on_train_epoch_end(self, trainer, module) -> None:
        epoch = trainer.current_epoch + 1
        if self.every and epoch % self.every == 0 and trainer.is_global_zero:
            write_samples(module, self.folder, f"epoch_{epoch:04d}", self.live)

    def on_train_end(self, trainer, module) -> None:
        if trainer.is_global_zero:
            write_samples(module, self.folder, "final", self.live)


class StepProgressBar(pl.callbacks.TQDMProgressBar):
    """Lightning's bar, counting optimizer steps: a Lightning step runs train.steps_per_execution of them."""

    @property
    def total_train_batches(self) -> int:
        return self.trainer.datamodule.steps_per_epoch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        done = trainer.datamodule.steps_of(batch_idx).stop  # optimizer steps of this epoch so far
        super().on_train_batch_end(trainer, module, outputs, batch, done - 1)

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
        sums = torch.stack([p.detach().double().sum() for p in module.net.parameters()])
        gathered = module.all_gather(sums)  # (world, parameters)
        if not torch.allclose(gathered, gathered[0].expand_as(gathered), rtol=1e-6, atol=1e-9):
            raise GenloopError(
                "train: the DDP replicas ended with different weights (gradients not averaged)"
            )


def write_samples(model, folder: Path, name: str, live: Any = None) -> Path:
    """Fixed seed, so successive pictures show the model changing, not the noise."""
    from tasks.images import save_grid

    was = model.training
    model.eval()
    try:
        if model.family == "gpt":
            texts = model.sample(4, seed=0, length=300)
            path = folder / f"{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n\n----\n\n".join(texts) + "\n")
        else:
            n_classes = len(model.data.get("classes") or []) or 8
            images = model.sample(n_classes * 8, seed=0).cpu().numpy()
            path = save_grid(images, folder / f"{name}.png", cols=n_classes)
            if live is not None:
                live.log_image("samples.png", str(path))
    finally:
        model.train(was)
    return path


def fit(
    model_params: ModelParams,
    train: TrainParams,
    processed: Path = paths.PROCESSED,
    out: Path = TRAIN,
    live_metrics: bool = True,
    progress: bool = True,
) -> dict:
    """Train (or resume) and export. Returns the metrics written to metrics.json."""
    import torch
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    meta, splits = load_splits(processed)
    pl.seed_everything(train.seed, workers=True, verbose=False)  # before the weights are initialised
    model = build_model(model_params, train, meta)
    checkpoints, rank0 = out / "checkpoints", int(os.environ.get("LOCAL_RANK", "0")) == 0
    stamp = fingerprint(model_params, train, meta)
    last = checkpoints / "last.ckpt"
    stamp_file = checkpoints / "fingerprint"
    resume = last.is_file() and stamp_file.is_file() and stamp_file.read_text().strip() == stamp
    if rank0 and not resume:  # different params or data: the old checkpoints do not apply
        shutil.rmtree(checkpoints, ignore_errors=True)
        checkpoints.mkdir(parents=True, exist_ok=True)
        stamp_file.write_text(stamp + "\n")

    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast
    if train.compile and type(model).training_loss is not models.common.GenerativeModel.training_loss:
        mode = None if train.compile is True else train.compile
        model.training_loss = torch.compile(model.training_loss, mode=mode)  # forward + loss (not GAN)
    data = make_data(meta, splits, model, train)

    logger: Any = False
    live = None
    if live_metrics:
        from dvclive.lightning import DVCLiveLogger

        logger = DVCLiveLogger(dir=str(out / "live"), save_dvc_exp=False, resume=resume, report=None)
        live = logger.experiment
    checkpoint = ModelCheckpoint(
        dirpath=checkpoints, filename="best", monitor="val_loss", mode="min", save_last=True
    )
    callbacks: list = [checkpoint]
    if train.ema_decay:  # validation, checkpoints and the export then see the averaged weights
        from tasks.averaging import WeightEMA

        # before SampleWriter: at the end of training the average is in place when the last samples are drawn
        callbacks.append(WeightEMA(train.ema_decay, train.steps_per_execution))
    callbacks += [SampleWriter(train.sample_every_n_epochs, out / "samples", live), ReplicaCheck()]
    if train.early_stopping_patience:
        callbacks.append(EarlyStopping("val_loss", patience=train.early_stopping_patience, mode="min"))
    if progress:
        callbacks.append(StepProgressBar())
    trainer = pl.Trainer(
        max_epochs=train.max_epochs,
        accelerator=train.accelerator,
        devices=train.devices,
        strategy=train.strategy,
        num_nodes=train.num_nodes,
        precision=resolve_precision(train),
        callbacks=callbacks,
        logger=logger,
        enable_progress_bar=progress,
        enable_model_summary=False,
        use_distributed_sampler=False,  # our samplers split batches by rank themselves
        deterministic=False,
        log_every_n_steps=max(1, round(LOG_EVERY / train.steps_per_execution)),
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data, ckpt_path=str(last) if resume else None)
    seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        return {}

    best = checkpoint.best_model_path
    if best:  # export the best epoch, not the last one
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
    model = model.cpu()
    models.save(model, out / "model")
    metrics = {
        "family": model.family,
        "val_loss": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "val_loss_unit": {"vae": "bits/dim (-ELBO bound)", "gan": "MMD^2 (pixels)", "gpt": "bits/char"}[
            model.family
        ],
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "resumed": resume,
        "seconds": round(seconds, 2),
        "parameters": sum(p.numel() for p in model.net.parameters()),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics
