"""Training a model family: the Lightning Trainer around it, resume, export and the run's own record.

`fit(model_params, train)` trains (or resumes) on data/processed and writes artifacts/train/:
checkpoints/ (last + best, each carrying a fingerprint of what it was trained on), model/ (weights,
description and training.json, the run's record of what it was trained with), samples/, live/ (dvclive)
and metrics.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

import models
from models import export
from models.common import GenerativeModel
from tasks.core import paths
from tasks.core.datasets import layout, line_of, load_splits, require_family_fits
from tasks.core.errors import GenloopError
from tasks.core.params import ModelParams, TrainParams
from tasks.training.module import Optim, Trainee

TRAIN = paths.ARTIFACTS / "train"
METRICS = paths.TRAIN_METRICS
RECORD = paths.TRAINING_RECORD
# Training figures are logged about every this many optimizer steps: a self.log costs ~0.5 ms.
LOG_EVERY = 50
# `genloop train --nodes N` names its launch; the node whose rank 0 exported writes it here
LAUNCH = "GENLOOP_LAUNCH"
EXPORTED = paths.STATE / "train" / "exported-by"


def build(model_params: ModelParams, train: TrainParams, meta: dict) -> Trainee:
    """The family of model.family on this data, ready for Lightning (and started from train.init_from)."""
    family = models.family(model_params.family)
    require_family_fits(family.name, meta["kind"], f"data/processed (from {meta.get('source')})")
    try:
        model = export.build(family.name, model_params.family_config(), layout(meta))
    except (ValueError, AssertionError) as err:
        raise GenloopError(f"model.{family.name}: {err}") from None
    if train.init_from:
        init_from(model, train.init_from)
    optim = Optim(
        train.lr, train.weight_decay, train.warmup_steps, train.schedule, train.grad_clip, train.seed
    )
    return Trainee(model, optim)


def init_from(model, source: str) -> None:
    """Fine-tune from an exported model folder or a registered version (`genloop-pydoc-topics-gpt:champion`,
    `genloop-pydoc-topics-gpt:<version>`): same family, same data layout (shape or vocabulary)."""
    folder = Path(source)
    if not folder.exists() and ":" in source:
        from tasks.registry import store

        folder = store.resolve(source)
    try:
        d = export.describe(folder)
    except FileNotFoundError as err:
        raise GenloopError(f"train.init_from: {err}") from None
    if d["family"] != model.family:
        raise GenloopError(f"train.init_from: {folder} holds a {d['family']} model, not a {model.family}")
    try:
        export.load_weights(model.net, folder / export.WEIGHTS)
    except RuntimeError as err:
        raise GenloopError(
            f"train.init_from: {folder} does not fit this model's shape ({config_changes(model, d)}): "
            f"{str(err).splitlines()[0]}"
        ) from None


def config_changes(model, described: dict) -> str:
    """What differs between an exported model's config and this run's model.<family> section."""
    theirs = described["config"]
    changes = [f"{k}: {theirs.get(k)} there, {v} here" for k, v in model.config.items() if theirs.get(k) != v]
    if not changes:
        return "same config, different data: vocabulary or image shape"
    return f"model.{model.family} differs, " + "; ".join(changes)


def fingerprint(model_params: ModelParams, train: TrainParams, meta: dict) -> str:
    """What a checkpoint must match to be resumed: model config, training params, data, and the code of
    the models and of this training loop."""
    folders = (Path(models.__file__).parent, Path(__file__).parent)
    code = {f"{p.parent.name}/{p.name}": p.read_text() for d in folders for p in sorted(d.glob("*.py"))}
    blob = json.dumps(
        {"model": model_params.model_dump(), "train": train.model_dump(), "data": meta, "code": code},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def checkpointing(folder: Path) -> tuple[pl.Callback, pl.Callback]:
    """best.ckpt, the epoch of the lowest validation loss (what is exported), and last.ckpt after every
    validation (what a killed run resumes from). Lightning's own save_last writes last.ckpt only when
    best.ckpt was written too: a run killed on a plateau resumed from its best epoch, up to
    early_stopping_patience epochs back, and trained them again."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    best = ModelCheckpoint(dirpath=folder, filename="best", monitor="val_loss", mode="min")
    latest = ModelCheckpoint(dirpath=folder, filename="last", save_top_k=1, enable_version_counter=False)
    return best, latest


def resumable(last: Path, stamp: str) -> bool:
    """Was the checkpoint at `last` written by a run of exactly this fingerprint that did not finish?
    A finished run asked again (dvc repro --force) trains again from the start, to the same weights:
    resumed, it would have nothing left to train, and write none of the outputs DVC just removed."""
    import torch

    finished = last.with_name(FINISHED)
    if not last.is_file() or (finished.is_file() and finished.read_text() == stamp):
        return False
    try:
        saved = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("fingerprint")
    except Exception:  # a checkpoint cut short by a crash, or from an older genloop: start afresh
        return False
    return saved == stamp


def elastic() -> tuple[int, int, int] | None:
    """Under torchrun (`genloop train --nodes N`): (global rank, world size, processes per node)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_WORLD_SIZE"])


def agree_on_resume(resume: bool, last: Path, accelerator: str, stamp: str) -> tuple[bool, int]:
    """Under torchrun, rank 0 alone decides whether to resume, and from which checkpoint: the furthest
    one any rank can resume (the rendezvous may have made another machine rank 0 the last time). The
    ranks whose checkout (another machine's) lacks it receive it, with the best checkpoint beside it,
    so that every rank resumes the same state and rank 0 can export the best. Ranks that would train
    other data, params or code (their fingerprint `stamp`) stop the run. Returns (resume, step). The
    process group made here is the one Lightning then uses."""
    import torch
    import torch.distributed as dist

    from tasks.core.storage import sha256_file, write_bytes_atomic

    if not dist.is_initialized():
        cuda = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    group = dist.new_group(backend="gloo")  # objects travel on the CPU whatever the devices
    rank, world = dist.get_rank(), dist.get_world_size()
    offer = (stamp, resume, _step(last) if resume else -1, sha256_file(last) if resume else None)
    offers: list = [None] * world
    dist.all_gather_object(offers, offer, group=group)
    if len({o[0] for o in offers}) > 1:
        dist.destroy_process_group(group)
        raise GenloopError(
            "train: the machines differ in data, params or code (their training fingerprints differ): "
            "check out the same commit and `dvc pull` the same data on each"
        )
    decision: list = [None]
    if rank == 0:
        source = max(range(world), key=lambda r: (offers[r][1], offers[r][2], -r))
        decision = [(offers[source][1], offers[source][2], source, offers[source][3])]
    dist.broadcast_object_list(decision, src=0, group=group)
    resume, step, source, digest = decision[0]
    if resume:
        need = rank != source and (not last.is_file() or sha256_file(last) != digest)
        needs: list = [None] * world
        dist.all_gather_object(needs, need, group=group)
        if any(needs):
            best = last.with_name("best.ckpt")
            files = [
                (last.read_bytes(), best.read_bytes() if best.is_file() else None) if rank == source else None
            ]
            dist.broadcast_object_list(files, src=source, group=group)
            if need:
                last.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(last, files[0][0])
                if files[0][1] is not None:
                    write_bytes_atomic(best, files[0][1])
    dist.destroy_process_group(group)
    return resume, max(step, 0)


def _step(last: Path) -> int:
    import torch

    return int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def saved_precision(last: Path) -> str | None:
    """The precision a checkpoint's run trained in (None from before it was saved)."""
    import torch

    return torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("precision") or None


# auto on a CPU: bf16 only where a few steps measure it this much faster. Where the two are close, the
# measurement's noise would decide, and two runs of the same params would train in different precisions
# to different weights (the 8x8 digits' VAE: 4 ms a step in each).
BF16_MIN_SPEEDUP = 1.2


def resolve_precision(train: TrainParams, model=None, data=None) -> str:
    """train.precision, or for `auto`: bf16 autocast on a GPU; on a CPU with native bf16 (AVX512-BF16 or
    AMX) bf16 autocast when a few steps of this model measure BF16_MIN_SPEEDUP times faster with it than
    in float32 (`measure_bf16`); float32 elsewhere (emulated bf16 is slower than float32)."""
    import torch

    if train.precision != "auto":
        return train.precision
    on_gpu = train.accelerator in ("gpu", "cuda") or (
        train.accelerator == "auto" and torch.cuda.is_available()
    )
    if on_gpu:
        return "bf16-mixed"
    one_loss = model is not None and type(model).training_loss is not GenerativeModel.training_loss
    if one_loss and data is not None and native_bf16():  # (the GAN's two losses: float32)
        fp32, bf16 = measure_bf16(model, data)
        chosen = "bf16-mixed" if bf16 * BF16_MIN_SPEEDUP <= fp32 else "32-true"
        ms = f"a step {bf16 * 1000:.0f} ms in bf16, {fp32 * 1000:.0f} ms in float32"
        print(f"precision auto: {chosen} ({ms}, measured)", flush=True)
        return chosen
    return "32-true"


def native_bf16() -> bool:
    """Does this CPU compute bf16 natively (AVX512-BF16 or AMX tiles)?"""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))


def measure_bf16(model, data, steps: int = 3) -> tuple[float, float]:
    """Seconds a training step (forward, loss, backward) of `model` on one batch takes in float32 and
    under bf16 autocast, the best of `steps` after one warm-up each. Torch's random state is put back and
    the gradients cleared, so the run that follows is the one it would have been."""
    import torch

    data.setup()
    batch = data.train_batch(0, 0)
    noise = torch.Generator().manual_seed(0)
    best = {}
    with torch.random.fork_rng(devices=[]):
        for bf16 in (False, True):
            times = []
            for _ in range(steps + 1):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = model.training_loss(batch, noise)
                loss.backward()
                times.append(time.perf_counter() - start)
            best[bf16] = min(times[1:])
    model.zero_grad(set_to_none=True)
    data.dev.clear()  # Lightning's own setup moves the data to the training device
    return best[False], best[True]


MIN_STEPS_PER_EPOCH, TEXT_STEPS_PER_EPOCH = 50, 100
FINISHED = "finished"  # beside the checkpoints: the fingerprint of the run that completed


def steps_per_epoch(kind: str, examples: int, train: TrainParams) -> int:
    """Optimizer steps between validations: train.steps_per_epoch, or one pass over the training
    images (at least MIN_STEPS_PER_EPOCH, so a 300-image folder does not validate every 11 steps), or
    TEXT_STEPS_PER_EPOCH windows of text. Under DDP every replica draws its own batches, so an epoch
    of one pass's steps sees the data once per replica; the budget stays in optimizer steps."""
    if train.steps_per_epoch:
        return train.steps_per_epoch
    if kind == "text":
        return TEXT_STEPS_PER_EPOCH
    return max(MIN_STEPS_PER_EPOCH, examples // train.batch_size)


# train.max_steps: auto, images: AUTO_PASSES passes over the training images, within these bounds
AUTO_PASSES, AUTO_MIN_STEPS, AUTO_MAX_STEPS = 200, 1500, 4000


def budget(train: TrainParams, examples: int) -> int:
    """train.max_steps, or for `auto` AUTO_PASSES passes over `examples` training images in batches of
    train.batch_size, within AUTO_MIN_STEPS and AUTO_MAX_STEPS: a small folder is seen as often, a
    large one stops at the cap; early stopping ends either sooner once validation stops improving."""
    if train.max_steps != "auto":
        return train.max_steps
    steps = AUTO_PASSES * examples // train.batch_size
    return int(min(max(steps, AUTO_MIN_STEPS), AUTO_MAX_STEPS))


def make_data(meta: dict, splits: dict, model, train: TrainParams):
    from tasks.training.data import DeviceData

    return DeviceData(
        meta["kind"],
        splits,
        batch_size=train.batch_size,
        seed=train.seed,
        steps_per_epoch=steps_per_epoch(meta["kind"], len(splits["train"][0]), train),
        block_size=model.cfg.block_size if meta["kind"] == "text" else 0,
        val_batches=train.val_batches,
        steps_per_execution=train.steps_per_execution,
    )


class _NoTips(logging.Filter):
    """Lightning's advertisements for its cloud services say nothing about this run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_lightning() -> None:
    for package in ("pytorch_lightning", "lightning_fabric"):  # the loggers Lightning's messages come from
        logger = logging.getLogger(f"{package}.utilities.rank_zero")
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())
    # torch 2.13 deprecates a pytree class Lightning 2.6 still uses: nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*deprecated", category=FutureWarning)


def fit(
    model_params: ModelParams,
    train: TrainParams,
    processed: Path = paths.PROCESSED,
    out: Path = TRAIN,
    live_metrics: bool = True,
    progress: bool = True,
    callbacks: list | None = None,
    samples: bool = True,
    tuned: dict | None = None,
) -> dict:
    """Train (or resume) and export. Returns the metrics written to metrics.json.

    `callbacks` join Lightning's (a tuning trial's pruning); `samples: False` writes no sample pictures;
    `tuned` (which values came from a tuning study) goes into the training record.
    The run seeds torch's global generator (initial weights, dropout) inside a fork of it: the caller's
    generator state is the same afterwards, so runs in one process do not disturb each other."""
    import torch

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        return _fit(
            model_params, train, processed, out, live_metrics, progress, callbacks or [], samples, tuned
        )


def _fit(
    model_params: ModelParams,
    train: TrainParams,
    processed: Path,
    out: Path,
    live_metrics: bool,
    progress: bool,
    extra_callbacks: list,
    samples: bool,
    tuned: dict | None,
) -> dict:
    import torch
    from pytorch_lightning.callbacks import EarlyStopping

    from tasks.training.callbacks import FollowCores, ReplicaCheck, SampleWriter, StepProgressBar

    quiet_lightning()
    launched = elastic()
    if launched:  # torchrun's processes make the world: DDP over them, the rest of params.yaml as it is
        rank, world, per_node = launched
        train = train.model_copy(
            update={"num_nodes": world // per_node, "devices": per_node, "strategy": "ddp"}
        )
    meta, splits = load_splits(processed)
    sized = train.max_steps == "auto"
    train = train.model_copy(update={"max_steps": budget(train, len(splits["train"][0]))})
    torch.manual_seed(train.seed)  # the initial weights
    trainee = build(model_params, train, meta)
    model = trainee.model
    rank0 = (launched[0] if launched else int(os.environ.get("LOCAL_RANK", "0"))) == 0
    chosen = choices(model_params, model.config, {"train.max_steps": train.max_steps} if sized else {})
    if chosen and rank0:  # what params.yaml left to `auto`, as this data made it
        print("auto: " + ", ".join(f"{k} {v}" for k, v in chosen.items()), flush=True)
    checkpoints = out / "checkpoints"
    trainee.fingerprint = fingerprint(model_params, train, meta)
    last = checkpoints / "last.ckpt"
    resume = resumable(last, trainee.fingerprint)
    if launched:
        resume, step = agree_on_resume(resume, last, train.accelerator, trainee.fingerprint)
        said = "resuming from" if resume else "starting at"
        print(f"rank {rank} of world size {world}: {said} step {step}", flush=True)
    if rank0 and not resume:  # different params, data or code: the old checkpoints do not apply
        shutil.rmtree(checkpoints, ignore_errors=True)

    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast
    if train.compile and type(model).training_loss is not GenerativeModel.training_loss:
        mode = None if train.compile is True else train.compile
        model.training_loss = torch.compile(model.training_loss, mode=mode)  # forward + loss (not GAN)
    data = make_data(meta, splits, model, train)

    logger: Any = False
    live = None
    if live_metrics:
        from dvclive.lightning import DVCLiveLogger

        # dvcyaml=False: our dvc.yaml declares the plots; dvclive must not edit that tracked file
        logger = DVCLiveLogger(
            dir=str(out / "live"), save_dvc_exp=False, resume=resume, report=None, dvcyaml=False
        )
        live = logger.experiment
    checkpoint, latest = checkpointing(checkpoints)
    callbacks: list = [checkpoint, latest]
    if train.ema_decay:  # validation, checkpoints and the export then see the averaged weights
        from tasks.training.averaging import WeightEMA

        # before SampleWriter: at the end of training the average is in place when the last samples are drawn
        callbacks.append(WeightEMA(train.ema_decay, train.steps_per_execution))
    if samples:
        callbacks.append(SampleWriter(train.sample_every_n_epochs, out / "samples", live))
    callbacks += [ReplicaCheck(), FollowCores(), *extra_callbacks]
    if train.early_stopping_patience:
        callbacks.append(EarlyStopping("val_loss", patience=train.early_stopping_patience, mode="min"))
    if progress:
        callbacks.append(StepProgressBar())
    # auto may measure (bf16 on a CPU that has it): a resumed run keeps what its first part chose
    saved = saved_precision(last) if resume else None
    trainee.precision = saved or resolve_precision(train, model, data)
    trainer = pl.Trainer(
        max_epochs=math.ceil(train.max_steps / data.steps_per_epoch),  # the budget in whole epochs
        accelerator=train.accelerator,
        devices=train.devices,
        strategy=train.strategy,
        num_nodes=train.num_nodes,
        precision=trainee.precision,
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
    with warnings.catch_warnings():
        if resume:  # the folder holds the checkpoint we resume from, on purpose
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        trainer.fit(trainee, datamodule=data, ckpt_path=str(last) if resume else None)
    seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        return {}

    best = checkpoint.best_model_path
    if best:  # export the best epoch, not the last one
        trainee.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    model = trainee.model.cpu()
    x_train, y_train = splits["train"]
    if meta["kind"] == "image":  # the family's last fit with the weights final (the VAE's prior)
        y = torch.as_tensor(y_train).long() if meta.get("classes") else None
        settled = model.after_training(torch.as_tensor(x_train).float() / 255, y, train.seed)
    else:
        settled = {}
    export.save(model, out / "model")
    family = models.family(model.family)
    metrics = {
        "family": family.name,
        "val_loss": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "val_loss_unit": family.heldout_unit,
        "epochs": trainer.current_epoch,
        "steps": trainee.steps_done,  # optimizer steps (batches; a GAN updates d_steps + 1 times in each)
        "resumed": resume,
        "seconds": round(seconds, 2),
        "parameters": sum(p.numel() for p in model.net.parameters()),
        **settled,
    }
    write_record(out / "model" / RECORD, model_params, train, meta, metrics, tuned, model.config, chosen)
    (checkpoints / FINISHED).write_text(trainee.fingerprint)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if os.environ.get(LAUNCH):  # `genloop train --nodes N`: this node's launcher updates DVC
        EXPORTED.parent.mkdir(parents=True, exist_ok=True)
        EXPORTED.write_text(os.environ[LAUNCH])
    return metrics


def choices(model_params: ModelParams, config: dict, budget: dict) -> dict:
    """What params.yaml left to `auto` and what this data made of it: the family, the family's sizes
    (config: as built) and the step budget (`budget`, when it was auto)."""
    from tasks.core.params import family_was_auto

    family = model_params.family
    chosen = {"model.family": family} if family_was_auto(model_params) else {}
    asked = model_params.family_config()
    return chosen | {f"model.{family}.{k}": config[k] for k, v in asked.items() if v == "auto"} | budget


def write_record(
    path: Path,
    model_params: ModelParams,
    train: TrainParams,
    meta: dict,
    metrics: dict,
    tuned: dict | None,
    config: dict,
    chosen: dict | None = None,
) -> None:
    """What this model was trained with, exported beside its weights: the registry's lineage reads it,
    not params.yaml, which may have changed since. `config`: the family's config as built, with what
    params.yaml left to `auto` sized for the data; `chosen` lists those values (`choices`)."""
    import datetime as dt

    from tasks.core.storage import write_json
    from tasks.registry.lineage import git

    family = model_params.family
    write_json(
        path,
        {
            "params": {"model": {"family": family, family: config}, "train": train.model_dump()},
            "auto": chosen or None,
            "data": {k: meta.get(k) for k in ("source", "seed", "counts")},
            "line": line_of(meta.get("source") or "", family, model_params.name),
            "git": git(),
            "result": {k: v for k, v in metrics.items() if k != "family"},
            "tuned": tuned,  # None, or the study, trial and values train took from the tune stage
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )
