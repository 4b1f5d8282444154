"""Our train path against a plain PyTorch loop: same model, same data, same batches, one run.

CPU (default): the params.yaml VAE on the processed digits and a small GPT on the processed text, each
for one epoch of N steps, timed through `tasks.trainer.fit` (Lightning, callbacks, checkpoints) and
through a bare loop; prints both and the ratio (target: ours <= 1.02x the plain loop).

GPU (--gpu): the GPT at GPT-2-small shape (12 layers, 12 heads, 768 wide, block 1024, char vocabulary,
batch 16) in bf16: tokens/s and MFU against the card's bf16 dense peak, for the plain loop eager, the
plain loop compiled, and our train path (compiled); steps after a warm-up only.
--quality also trains the GPU preset (presets/gpt-gpu.yaml) and prints bits/char on the test split.

Data: data/processed of the current project (image and text kinds via --images/--text folders).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, SXM


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpt_flops_per_token(model, T: int) -> float:
    """6N + 12 L H Q T (PaLM appendix B; nanoGPT's estimate_mfu), N without position embeddings."""
    cfg = model.cfg
    n = sum(p.numel() for p in model.net.parameters()) - model.net.wpe.weight.numel()
    return 6 * n + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * T


def plain_loop(model, data, steps: int, warmup: int, compile_: bool, clip: float, precision: str) -> dict:
    """The reference: the same batches through forward, backward, clip, fused AdamW, nothing else."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).train()
    data.trainer = None
    data.setup()
    data.dev = {k: (x.to(device), None if y is None else y.to(device)) for k, (x, y) in data.dev.items()}
    opt = model.make_optimizer(model.net.parameters())
    fn = torch.compile(model.training_loss) if compile_ else model.training_loss
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    times = []
    for i in range(warmup + steps):
        x, y = data.train_batch(i // data.steps_per_epoch, i % data.steps_per_epoch)
        sync()
        t = time.perf_counter()
        with autocast:
            loss = fn((x, y))
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.net.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"seconds": sum(times), "steps": len(times)}


def timed_fit(params, processed: Path, steps: int, warmup: int, out: Path) -> dict:
    """Our path: tasks.trainer.fit, with a callback timing the same steps after the warm-up."""
    import pytorch_lightning as pl

    from tasks import trainer as T

    marks: dict = {}

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == warmup:
                sync()
                marks["start"] = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == warmup + steps:
                sync()
                marks["end"] = time.perf_counter()

    import shutil

    shutil.rmtree(out, ignore_errors=True)  # a fresh run: same params would otherwise resume a finished one
    original = T.SampleWriter
    T.SampleWriter = lambda *a, **k: Clock()  # time steps, not sample writing
    try:
        start = time.perf_counter()
        T.fit(params.model, params.train, processed=processed, out=out, live_metrics=False, progress=False)
        total = time.perf_counter() - start
    finally:
        T.SampleWriter = original
    return {"seconds": marks["end"] - marks["start"], "steps": steps, "total": total}


def run_plain(p, folder: Path, args, compile_: bool, precision: str) -> tuple[dict, object]:
    """The plain loop on a freshly built model of params `p` (same seed as our path)."""
    from tasks.trainer import build_model, load_splits, make_data

    meta, splits = load_splits(folder)
    torch.manual_seed(0)
    model = build_model(p.model, p.train, meta)
    data = make_data(meta, splits, model, p.train)
    return plain_loop(model, data, args.steps, args.warmup, compile_, p.train.grad_clip, precision), model


def overrides(params, **train):
    from tasks.params import Params

    raw = params.model_dump(by_alias=True)
    raw["train"].update(train)
    return Params.model_validate(raw)


def cpu_bench(args) -> None:
    from tasks.params import load

    base = load(args.params)
    for label, folder, family in (
        ("VAE / digits", args.images, "vae"),
        ("GPT / pydoc topics", args.text, "gpt"),
    ):
        if not (Path(folder) / "meta.json").is_file():
            print(f"{label}: skipped, no {folder}/meta.json (run the data stages with that source)")
            continue
        raw = base.model_dump(by_alias=True)
        raw["model"]["family"] = family
        from tasks.params import Params

        p = Params.model_validate(raw)
        p = overrides(
            p,
            max_epochs=1,
            steps_per_epoch=args.steps + args.warmup + 1,
            early_stopping_patience=0,
            sample_every_n_epochs=0,
            val_batches=1,
            accelerator="cpu",
            precision="32-true",
        )
        plain, _ = run_plain(p, Path(folder), args, compile_=False, precision="32-true")
        ours = timed_fit(p, Path(folder), args.steps, args.warmup, Path(args.out) / family)
        print(
            f"{label}: {args.steps} steps  plain loop {plain['seconds']:.3f} s  "
            f"ours {ours['seconds']:.3f} s  "
            f"ratio {ours['seconds'] / plain['seconds']:.3f}x  (ours incl. setup, validation, checkpoints: "
            f"{ours['total']:.2f} s)"
        )


def report(label: str, per_step: float, tokens: int, flops_per_token: float, peak: float | None) -> None:
    tps = tokens / per_step
    mfu = tps * flops_per_token / peak if peak else float("nan")
    print(
        f"{label:34s} {per_step * 1e3:8.1f} ms/step  {tps:10.0f} tokens/s  MFU {100 * mfu:5.1f}%", flush=True
    )


def gpu_bench(args) -> None:
    from tasks.params import load

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    print(f"device: {name}, bf16 dense peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
    p = load(args.gpu_params)
    shape = {"block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768, "dropout": 0.0}
    raw = p.model_dump(by_alias=True)
    raw["model"]["family"] = "gpt"
    raw["model"]["gpt"].update(shape)
    from tasks.params import Params

    p = overrides(
        Params.model_validate(raw),
        batch_size=16,
        max_epochs=1,
        early_stopping_patience=0,
        sample_every_n_epochs=0,
        val_batches=1,
        steps_per_epoch=args.steps + args.warmup + 1,
        precision="bf16-mixed",
        compile=True,
    )
    tokens = 16 * 1024
    rows = []
    for label, compile_ in (("plain loop, eager", False), ("plain loop, torch.compile", True)):
        r, model = run_plain(p, Path(args.text), args, compile_=compile_, precision="bf16-mixed")
        rows.append((label, r["seconds"] / r["steps"]))
        fpt = gpt_flops_per_token(model, 1024)
        report(label, rows[-1][1], tokens, fpt, peak)
        del model
        torch.cuda.empty_cache()
    ours = timed_fit(p, Path(args.text), args.steps, args.warmup, Path(args.out) / "gpu")
    rows.append(("our train path (compile, bf16)", ours["seconds"] / ours["steps"]))
    report(rows[-1][0], rows[-1][1], tokens, fpt, peak)
    print(
        f"ratio our path / plain eager: {rows[2][1] / rows[0][1]:.3f}x;  "
        f"/ plain compiled: {rows[2][1] / rows[1][1]:.3f}x"
    )


def quality(args) -> None:
    """Train the GPU preset and score the test split (the corpus's held-out tail) in bits/char."""
    import models
    from tasks import trainer as T
    from tasks.params import load

    p = load(args.gpu_params)
    start = time.perf_counter()
    metrics = T.fit(
        p.model,
        p.train,
        processed=Path(args.text),
        out=Path(args.out) / "quality",
        live_metrics=False,
        progress=False,
    )
    model = models.load(
        Path(args.out) / "quality" / "model", map_location="cuda" if torch.cuda.is_available() else "cpu"
    )
    test = torch.from_numpy(np.load(Path(args.text) / "test.npy").astype(np.int64))
    bpc = model.bits_per_char(test)
    print(
        json.dumps(
            {
                "preset": args.gpu_params,
                "train_seconds": round(time.perf_counter() - start, 1),
                "epochs": metrics["epochs"],
                "best_val_bpc": metrics["val_loss"],
                "test_bpc": round(bpc, 4),
            }
        )
    )
    print(model.sample(1, "The ", seed=0, length=300)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--images", default="data/processed", help="processed image data (meta.json)")
    ap.add_argument("--text", default="bench/.data/text", help="processed text data (meta.json)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", default="bench/.out")
    ap.add_argument("--gpu", action="store_true", help="GPT-2-small shape tokens/s and MFU (needs CUDA)")
    ap.add_argument("--quality", action="store_true", help="train the GPU preset, report test bits/char")
    ap.add_argument("--gpu-params", default="presets/gpt-gpu.yaml")
    args = ap.parse_args()
    if args.gpu:
        gpu_bench(args)
    if args.quality:
        quality(args)
    if not args.gpu and not args.quality:
        cpu_bench(args)


if __name__ == "__main__":
    main()
