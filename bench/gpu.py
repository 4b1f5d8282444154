"""Every GPU figure in one command, within 8 minutes on one H100 or H200, printed as one table:

- the GPT at GPT-2-small shape (12 layers, 12 heads, 768 wide, block 1024, batch 16, bf16, compiled):
  tokens/s and MFU of a plain compiled loop (the same model: forward, backward, clip, fused AdamW) and of
  our train path (Lightning with our Trainee and device-resident data, as `genloop stage train` runs);
- the GPU preset (presets/gpt-gpu.yaml) trained for its steps on Python's help topics, split as the
  augment stage splits them: bits/char on the held-out tail (target <= 1.60);
- one epoch of params.yaml's digits VAE (the step after warm-up, as our train path runs it);
- the service's batched generate (the call the service's batcher makes: 64 one-sample jobs of 64
  characters) beside the raw forward passes the same generation needs.

It imports torch, numpy, pytorch_lightning and PyYAML (all on the GPU machine), the models (models/), the
training loop's Lightning module and data (tasks/training/module.py, data.py), the text split
(tasks/core/text_split.py) and the digits' reader (tasks/ingest/digits.py, which reads the file
scikit-learn ships, so scikit-learn must be installed but is not imported); nothing of the
pipeline's services. The preset is trained with its own steps, schedule and validation, without the
pipeline's early stopping or checkpoints, so its figure can differ slightly from `dvc repro`'s.

    python bench/gpu.py              # on the GPU machine
    python bench/gpu.py --smoke      # toy sizes on a CPU: checks the script, not the figures
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, SXM


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def params(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def corpus(augment: dict) -> tuple[list[str], dict[str, np.ndarray]]:
    """Python's help topics, one file per topic joined in path order, split as the augment stage does."""
    from pydoc_data.topics import topics

    from tasks.core.text_split import split_text

    text = "\n".join(topics[name] for name in sorted(topics))
    return split_text(text, augment["test_fraction"], augment["val_fraction"])


def gpt(config: dict, vocab: list[str]):
    from models import export

    return export.build("gpt", config, {"kind": "text", "vocab": vocab})


def optim(train: dict):
    from tasks.training.module import Optim

    keys = ("lr", "weight_decay", "warmup_steps", "schedule", "grad_clip", "seed")
    return Optim(*(train[k] for k in keys))


def fit(model, kind: str, splits: dict, train: dict, steps: int, per_epoch: int, block: int, device: str,
        validate: bool = False) -> list[float]:  # fmt: skip
    """Our train path's loop (Trainee, DeviceData, Lightning) for `steps` optimizer steps; the wall
    time at the end of each step (synchronised)."""
    import pytorch_lightning as pl

    from tasks.training.data import DeviceData
    from tasks.training.module import Trainee

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_end(self, *args) -> None:
            sync()
            self.times.append(time.perf_counter())

    if train.get("compile") and device == "cuda":
        mode = None if train["compile"] is True else train["compile"]
        model.training_loss = torch.compile(model.training_loss, mode=mode)
    clock = Clock()
    pairs = {k: (v if isinstance(v, tuple) else (v, None)) for k, v in splits.items()}
    data = DeviceData(
        kind, pairs, batch_size=train["batch_size"], seed=train["seed"], steps_per_epoch=per_epoch,
        block_size=block, val_batches=train.get("val_batches"), steps_per_execution=1,
    )  # fmt: skip
    gpu = device == "cuda"
    trainer = pl.Trainer(
        max_epochs=math.ceil(steps / per_epoch), max_steps=steps, accelerator="gpu" if gpu else "cpu",
        devices=1, precision="bf16-mixed" if gpu else "32-true", callbacks=[clock], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=1.0 if validate else 0, use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(Trainee(model, optim(train)), datamodule=data)
    return clock.times


def flops_per_token(model, T: int) -> float:
    """6N + 12 L H Q T (PaLM appendix B; nanoGPT's estimate_mfu), N without position embeddings."""
    cfg = model.cfg
    wpe = getattr(model.net, "wpe", None)
    n = sum(p.numel() for p in model.net.parameters()) - (wpe.weight.numel() if wpe is not None else 0)
    return 6 * n + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * T


def gpt2_small(vocab, splits, base: dict, train: dict, smoke: bool, device: str) -> list[tuple]:
    shape = dict(block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0, position="learned")
    if smoke:
        shape |= dict(block_size=32, n_layer=2, n_head=2, n_embd=32)
    config = {k: v for k, v in base.items() if k != "train"} | shape  # (its train keys are not the model's)
    batch, warmup, steps = (4, 2, 3) if smoke else (16, 15, 30)
    train = train | {"batch_size": batch, "compile": train.get("compile") or True, "warmup_steps": 0}
    tokens = batch * config["block_size"]
    peak = next(
        (v for k, v in PEAK_BF16.items() if device == "cuda" and k in torch.cuda.get_device_name()), None
    )
    rows = []

    # the plain compiled loop: the same model and recipe, nothing else
    torch.manual_seed(train["seed"])
    model = gpt(config, vocab).to(device)
    loss_fn = torch.compile(model.training_loss) if device == "cuda" else model.training_loss
    opt = torch.optim.AdamW(model.net.parameters(), lr=train["lr"], fused=device == "cuda")
    data = torch.as_tensor(splits["train"].astype(np.int64), device=device)
    g = torch.Generator(device=device).manual_seed(0)
    ctx = torch.autocast(device, torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    for _ in range(warmup + steps):
        starts = torch.randint(0, len(data) - config["block_size"] - 1, (batch,), device=device, generator=g)
        idx = starts[:, None] + torch.arange(config["block_size"] + 1, device=device)
        window = data[idx]
        with ctx:
            loss = loss_fn((window[:, :-1], window[:, 1:]), g)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.net.parameters(), train["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter())
    fpt = flops_per_token(model, config["block_size"])
    rows.append(
        ("GPT-2 small, plain compiled loop", (times[-1] - times[warmup - 1]) / steps, tokens, fpt, peak)
    )
    del model, opt
    # our train path, the same shape and batch
    torch.manual_seed(train["seed"])
    model = gpt(config, vocab)
    t = fit(model, "text", splits, train, warmup + steps, warmup + steps, config["block_size"], device)
    rows.append(("GPT-2 small, our train path", (t[-1] - t[warmup - 1]) / steps, tokens, fpt, peak))
    return rows


def preset_quality(vocab, splits, preset: dict, smoke: bool, device: str):
    """The GPU preset trained for its steps; bits/char on the test split; the trained model."""
    train = dict(preset["train"])
    config = dict(preset["model"]["gpt"])
    train |= config.pop("train", None) or {}  # the family's own training settings, as params.py applies
    if smoke:
        config |= dict(block_size=32, n_layer=2, n_head=2, n_embd=32)
        train |= {"max_steps": 6, "steps_per_epoch": 3, "batch_size": 8, "val_batches": 2}
    torch.manual_seed(train["seed"])
    model = gpt(config, vocab)
    start = time.perf_counter()
    steps, per_epoch = train["max_steps"], train["steps_per_epoch"]
    fit(model, "text", splits, train, steps, per_epoch, config["block_size"], device, validate=True)
    seconds = time.perf_counter() - start
    model.net.to(device).eval()
    test = torch.from_numpy(splits["test"][: 20_000 if smoke else None].astype(np.int64))
    with torch.inference_mode():
        bpc = model.bits_per_char(test)
    return bpc, seconds, model


def vae_epoch(base: dict, smoke: bool, device: str) -> tuple[float, int]:
    """One epoch of params.yaml's VAE on the digits (after a warm-up epoch); seconds and steps."""
    from models import export
    from tasks.ingest.digits import load_digits

    images, y = load_digits()
    x = np.rint(images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    n = len(x) if not smoke else 256
    order = np.random.default_rng(0).permutation(len(x))[:n]
    cut = int(n * 0.8)
    splits = {"train": (x[order[:cut]], y[order[:cut]]), "val": (x[order[cut:]], y[order[cut:]])}
    train = dict(base["train"]) | {"compile": False}
    per_epoch = max(1, cut // train["batch_size"])
    model = export.build("vae", base["model"]["vae"], {"kind": "image", "shape": [1, 8, 8],
                                                         "classes": [str(c) for c in range(10)]})  # fmt: skip
    t = fit(model, "image", splits, train, 2 * per_epoch, per_epoch, 0, device)
    return t[-1] - t[per_epoch - 1], per_epoch


def generate_vs_forward(model, smoke: bool, device: str) -> tuple[float, float]:
    """Characters/s of the batcher's call (64 one-sample jobs of 64 characters) and of the bare forward
    passes that generation needs (the growing context, no sampling)."""
    jobs = [{"n": 1, "seed": i, "condition": "The ", "length": 16 if smoke else 64} for i in range(64)]
    length = jobs[0]["length"]
    model.net.to(device).eval()
    with torch.inference_mode():
        model.sample_batch(jobs[:4])  # warm-up
        sync()
        start = time.perf_counter()
        model.sample_batch(jobs)
        sync()
        generate = 64 * length / (time.perf_counter() - start)
        block = model.cfg.block_size
        idx = torch.zeros((64, 4), dtype=torch.long, device=device)
        sync()
        start = time.perf_counter()
        for _ in range(length):
            logits = model.net(idx[:, -block:])
            idx = torch.cat([idx, logits[:, -1:].argmax(-1)], dim=1)
        sync()
        forward = 64 * length / (time.perf_counter() - start)
    return generate, forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on a CPU: checks the script only")
    parser.add_argument("--preset", default=str(ROOT / "presets" / "gpt-gpu.yaml"))
    a = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
    if device == "cpu" and not a.smoke:
        sys.exit("no GPU here: run it on the GPU machine, or pass --smoke to check the script on a CPU")
    torch.set_float32_matmul_precision("high")
    started = time.perf_counter()
    preset, base = params(Path(a.preset)), params(ROOT / "params.yaml")
    vocab, splits = corpus(preset["augment"])
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke run: toy sizes)"
    rows = gpt2_small(vocab, splits, preset["model"]["gpt"], preset["train"], a.smoke, device)
    bpc, train_s, model = preset_quality(vocab, splits, preset, a.smoke, device)
    vae_s, vae_steps = vae_epoch(base, a.smoke, device)
    generate, forward = generate_vs_forward(model, a.smoke, device)
    print(f"\n{name}; torch {torch.__version__}; {time.perf_counter() - started:.0f} s in all")
    print(f"{'measurement':<42}{'figure':>28}")
    for label, per_step, tokens, fpt, peak in rows:
        mfu = f", MFU {tokens * fpt / per_step / peak:.1%}" if peak else ""
        print(
            f"{label:<42}{f'{tokens / per_step:,.0f} tokens/s{mfu}':>28}   ({per_step * 1000:.1f} ms a step)"
        )
    print(f"{'ours / plain compiled (time a step)':<42}{rows[1][1] / rows[0][1]:>27.3f}x")
    print(f"{'GPU preset, test bits/char':<42}{bpc:>28.3f}   (target <= 1.60; trained in {train_s:.0f} s)")
    print(f"{'digits VAE, one epoch':<42}{f'{vae_s:.2f} s':>28}   ({vae_steps} steps)")
    print(f"{'batched generate (64 jobs), chars/s':<42}{generate:>28,.0f}")
    share = f"(generate / forward {generate / forward:.0%})"
    print(f"{'raw forward passes, chars/s':<42}{forward:>28,.0f}   {share}")


if __name__ == "__main__":
    main()
