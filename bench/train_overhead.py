"""Our train path against a plain PyTorch loop: same model, same data, same batches, one run.

CPU (default): the params.yaml VAE on the processed digits and a small GPT on the processed text, each
for one epoch of N steps through `tasks.training.fit.fit` (Lightning, callbacks, checkpoints) and through a
bare loop of the same recipe, for params.yaml's train.steps_per_execution and the --executions values.
The two are paired: after every Lightning step of ours, the plain loop runs the same optimizer steps on
its own copy of the model, so a shared machine's drifting speed hits both alike. Prints ms/step of both
and the ratio (target: ours <= 1.02x the plain loop).

GPU (--gpu): the GPT at GPT-2-small shape (12 layers, 12 heads, 768 wide, block 1024, char vocabulary,
batch 16) in bf16: tokens/s and MFU against the card's bf16 dense peak, for the plain loop eager, the
plain loop compiled, and our train path (compiled); steps after a warm-up only.
--quality also trains the GPU preset (presets/gpt-gpu.yaml; --preset another params file, --set a change)
and prints bits/char on the test split: on a CPU, e.g. params.yaml's GPT with either kind of positions.
--profile N adds where the plain loop's time goes over N steps, by kind of kernel (bench/kernel_time.py):
on a GPU for the compiled GPT-2-small loop (the same kernels as our path), on a CPU for each family.

Data: data/processed of the current project for images (--images), and for text (--text) Python's help
topics split as the augment stage splits them (params.yaml's augment section), made on first use.
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
    wpe = getattr(model.net, "wpe", None)  # learned positions (rope has none)
    n = sum(p.numel() for p in model.net.parameters()) - (wpe.weight.numel() if wpe is not None else 0)
    return 6 * n + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * T


class PlainLoop:
    """The reference: the same batches and the same recipe (forward, backward, clip, AdamW, the
    learning-rate schedule) on a freshly built model of params `p` (same seed as ours), nothing else."""

    def __init__(self, p, folder: Path, total_steps: int, compile_: bool | str = False) -> None:
        from tasks.core.datasets import load_splits
        from tasks.training.fit import build, make_data
        from tasks.training.module import lr_factor, seed_of

        meta, splits = load_splits(folder)
        torch.manual_seed(p.train.seed)  # the same initial weights as ours
        trainee = build(p.model, p.train, meta)
        self.model = trainee.model
        self.data = make_data(meta, splits, self.model, p.train)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).train()
        self.data.trainer = None
        self.data.setup()
        dev = self.device
        for split, (x, y) in self.data.dev.items():  # setup() without a trainer puts them on the CPU
            self.data.dev[split] = (x.to(dev), None if y is None else y.to(dev))
        (group,) = self.model.optimizer_groups()
        t = p.train
        self.opt = torch.optim.AdamW(
            trainee.decay_groups(group), lr=t.lr * group.lr_scale, betas=group.betas, fused=dev.type == "cuda"
        )
        factor = lambda step: lr_factor(step, t.warmup_steps, total_steps, t.schedule)  # noqa: E731
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, factor)
        self.seed, self.noise = t.seed, torch.Generator(device=dev)  # seeded per step, as ours is
        self.seed_of = seed_of
        self.loss = self.model.training_loss
        if compile_:  # True: torch.compile's default mode
            self.loss = torch.compile(self.loss, mode=None if compile_ is True else compile_)
        self.clip = p.train.grad_clip
        bf16 = str(p.train.precision).startswith("bf16")
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def run(self, first: int, n: int) -> float:
        """Optimizer steps first .. first + n - 1 (batches as ours draws them); returns the seconds."""
        per_epoch = self.data.steps_per_epoch
        sync()
        start = time.perf_counter()
        for i in range(first, first + n):
            x, y = self.data.train_batch(i // per_epoch, i % per_epoch)
            self.noise.manual_seed(self.seed_of(self.seed, i))
            with self.autocast:
                loss = self.loss((x, y), self.noise)
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.model.net.parameters(), self.clip)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start


def timed_fit(
    params, processed: Path, steps: int, warmup: int, out: Path, plain: PlainLoop | None = None
) -> dict:
    """Our path, tasks.training.fit.fit, timed over whole Lightning steps (each may run several optimizer
    steps, train.steps_per_execution) from the first at or past the warm-up.

    With `plain`, the measurement is paired: after each Lightning step the plain loop runs the same
    optimizer steps, so both see the same machine (a shared machine's speed drifts by more than the
    overhead measured here); ours is then the time from one plain run to the next, a full Lightning step."""
    import shutil

    import pytorch_lightning as pl

    from tasks.training import callbacks
    from tasks.training.fit import fit

    m = {"ours": 0.0, "plain": 0.0, "steps": 0, "done": 0}

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if plain is None and "start" not in m and module.steps_done >= warmup:
                sync()
                m["start"], m["from"] = time.perf_counter(), module.steps_done

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            step = module.steps_done  # optimizer steps so far
            if plain is None:  # synchronise only at the ends: a sync per step would stall the host
                if "start" in m and "end" not in m and step >= warmup + steps:
                    sync()
                    now = time.perf_counter()
                    m["ours"], m["steps"], m["end"] = now - m["start"], step - m["from"], now
                return
            sync()
            now = time.perf_counter()
            n = step - m["done"]  # the optimizer steps this Lightning step ran
            counted = m["done"] >= warmup and m["steps"] < steps
            if counted:
                m["ours"] += now - m["last"]
            seconds = plain.run(m["done"], n)
            if counted:
                m["plain"] += seconds
                m["steps"] += n
            m["done"] = step
            m["last"] = time.perf_counter()

    shutil.rmtree(out, ignore_errors=True)  # a fresh run: same params would otherwise resume a finished one
    original = callbacks.SampleWriter
    callbacks.SampleWriter = lambda *a, **k: Clock()  # time steps, not sample writing
    try:
        start = time.perf_counter()
        fit(params.model, params.train, processed=processed, out=out, live_metrics=False, progress=False)
        total = time.perf_counter() - start
    finally:
        callbacks.SampleWriter = original
    return {"seconds": m["ours"], "plain_seconds": m["plain"], "steps": m["steps"], "total": total}


def ensure_text(folder: Path, params_file: str) -> None:
    """The processed text of `pydoc:topics` in `folder`, made as the data stages make data/processed."""
    if (folder / "meta.json").is_file():
        return
    from tasks.augment import process
    from tasks.core.params import load
    from tasks.ingest.sources import pydoc_topics

    folder.mkdir(parents=True, exist_ok=True)
    files = [e.as_dict() for e in sorted(pydoc_topics(folder / "raw"), key=lambda e: e.path)]
    manifest = {"kind": "text", "source": "pydoc:topics", "files": files}
    meta = process(manifest, load(params_file).augment, folder, raw=folder / "raw")
    print(f"made {folder} from pydoc:topics ({meta['counts']})")


def load_preset(args):
    """The --preset params (default: the GPU preset) with --set overrides (dotted keys, YAML values):
    one run tries a variant."""
    import yaml

    from tasks.core.params import load

    changes = dict(item.partition("=")[::2] for item in args.set)
    return revised(load(args.preset), {key: yaml.safe_load(value) for key, value in changes.items()})


def revised(params, changes: dict):
    """`params` with dotted keys replaced (model.gpt.dropout: 0.2), validated again as params.yaml is."""
    from tasks.core.params import with_values

    return with_values(params, changes, "the bench's settings")


def overrides(params, **train):
    return revised(params, {f"train.{key}": value for key, value in train.items()})


def cpu_bench(args) -> None:
    from tasks.core.params import load

    base = load(args.params)
    for label, folder, family in (
        ("VAE / digits", args.images, "vae"),
        ("GPT / pydoc topics", args.text, "gpt"),
    ):
        if not (Path(folder) / "meta.json").is_file():
            print(f"{label}: skipped, no {folder}/meta.json (run the data stages with that source)")
            continue
        p = revised(base, {"model.family": family})
        base_k = p.train.steps_per_execution
        ks = sorted({base_k, *args.executions})
        p = overrides(
            p,
            max_steps=args.steps + args.warmup + max(ks),
            steps_per_epoch=args.steps + args.warmup + max(ks),
            early_stopping_patience=0,
            sample_every_n_epochs=0,
            val_batches=1,
            accelerator="cpu",
            precision="32-true",
        )
        # Paired rounds (see timed_fit): ours and the plain loop alternate every Lightning step.
        ours_s, plain_s, total = dict.fromkeys(ks, 0.0), dict.fromkeys(ks, 0.0), 0.0
        rounds: dict[int, list[float]] = {k: [] for k in ks}
        for _ in range(args.repeat):
            for k in ks:
                q = overrides(p, steps_per_execution=k)
                plain = PlainLoop(q, Path(folder), q.train.steps_per_epoch)
                out = Path(args.out) / family
                r = timed_fit(q, Path(folder), args.steps, max(1, args.warmup), out, plain)
                ours_s[k] += r["seconds"] / r["steps"] / args.repeat
                plain_s[k] += r["plain_seconds"] / r["steps"] / args.repeat
                rounds[k].append(r["seconds"] / r["plain_seconds"])
                total = r["total"]
        print(f"{label}: {args.repeat} paired rounds of {args.steps} steps after {args.warmup} warm-up steps")
        for k in ks:
            mark = "  <- params" if k == base_k else ""
            spread = ", ".join(f"{x:.3f}" for x in rounds[k])
            print(
                f"  steps_per_execution {k:3d}: plain loop {plain_s[k] * 1e3:8.3f} ms/step  "
                f"ours {ours_s[k] * 1e3:8.3f} ms/step  ratio {ours_s[k] / plain_s[k]:.3f}x "
                f"(rounds: {spread}){mark}"
            )
        print(f"  (one run of ours incl. setup, validation, checkpoints: {total:.2f} s)")
        if args.profile:
            print(profile_plain(q, Path(folder), args.profile))


def profile_plain(p, folder: Path, steps: int) -> str:
    """kernel_time's table for the plain loop of params `p` (warmed up first)."""
    from kernel_time import breakdown

    plain = PlainLoop(p, folder, p.train.steps_per_epoch)
    plain.run(0, 3)
    return breakdown(lambda n: plain.run(3, n), steps)


def report(label: str, per_step: float, tokens: int, flops_per_token: float, peak: float | None) -> None:
    tps = tokens / per_step
    mfu = tps * flops_per_token / peak if peak else float("nan")
    print(
        f"{label:34s} {per_step * 1e3:8.1f} ms/step  {tps:10.0f} tokens/s  MFU {100 * mfu:5.1f}%", flush=True
    )


def attention_backends(order: str):
    """A context preferring the given SDPA backends in order (e.g. cudnn,flash), or none for torch's own."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not order:
        return contextlib.nullcontext()
    names = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}
    backends = [getattr(SDPBackend, names[n]) for n in order.split(",")] + [SDPBackend.MATH]
    return sdpa_kernel(backends, set_priority=True)


def gpu_bench(args) -> None:
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    print(f"device: {name}, bf16 dense peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
    p = load_preset(args)
    # GPT-2 small's shape and positions; the rest (fp32_residual, compile mode) from the preset and --set
    shape = dict(block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0, position="learned")
    p = overrides(
        revised(p, {"model.family": "gpt"} | {f"model.gpt.{k}": v for k, v in shape.items()}),
        batch_size=16,
        max_steps=args.steps + args.warmup + p.train.steps_per_execution,
        early_stopping_patience=0,
        sample_every_n_epochs=0,
        val_batches=1,
        steps_per_epoch=args.steps + args.warmup + p.train.steps_per_execution,
        precision="bf16-mixed",
        compile=p.train.compile or True,  # the preset's mode (--set train.compile=max-autotune), else default
    )
    tokens = 16 * 1024
    rows = []
    mode = p.train.compile
    name = mode if isinstance(mode, str) else "default"
    loops = (("plain loop, eager", False), (f"plain loop, torch.compile ({name})", mode))
    for label, compile_ in loops[args.skip_eager :]:
        plain = PlainLoop(p, Path(args.text), p.train.steps_per_epoch, compile_=compile_)
        plain.run(0, args.warmup)
        rows.append((label, plain.run(args.warmup, args.steps) / args.steps))
        fpt = gpt_flops_per_token(plain.model, 1024)
        report(label, rows[-1][1], tokens, fpt, peak)
        if args.profile and compile_:  # the kernels our path runs too (it compiles the same way)
            from kernel_time import breakdown

            print(breakdown(lambda n, plain=plain: plain.run(args.warmup + args.steps, n), args.profile))
        del plain
        torch.cuda.empty_cache()
    ours = timed_fit(p, Path(args.text), args.steps, args.warmup, Path(args.out) / "gpu")
    rows.append((f"our train path (compile {name}, bf16)", ours["seconds"] / ours["steps"]))
    report(rows[-1][0], rows[-1][1], tokens, fpt, peak)
    print("ratio our path / " + ";  / ".join(f"{label}: {rows[-1][1] / t:.3f}x" for label, t in rows[:-1]))


def quality(args) -> None:
    """Train the preset and score the test split (the corpus's held-out tail) in bits/char."""
    from models import export
    from tasks.training.fit import fit

    p = load_preset(args)
    start = time.perf_counter()
    metrics = fit(
        p.model,
        p.train,
        processed=Path(args.text),
        out=Path(args.out) / "quality",
        live_metrics=False,
        progress=False,
    )
    model = export.load(
        Path(args.out) / "quality" / "model", map_location="cuda" if torch.cuda.is_available() else "cpu"
    )
    test = torch.from_numpy(np.load(Path(args.text) / "test.npy").astype(np.int64))
    bpc = model.bits_per_char(test)
    print(
        json.dumps(
            {
                "preset": args.preset,
                "set": args.set,
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
    ap.add_argument("--repeat", type=int, default=2, help="rounds per variant (CPU); the fastest counts")
    ap.add_argument(
        "--executions",
        type=lambda v: [int(k) for k in v.split(",")],
        default=[1, 8],
        help="train.steps_per_execution values to time besides params.yaml's (CPU), e.g. 1,8",
    )
    ap.add_argument("--out", default="bench/.out")
    ap.add_argument("--gpu", action="store_true", help="GPT-2-small shape tokens/s and MFU (needs CUDA)")
    ap.add_argument("--quality", action="store_true", help="train the preset, report test bits/char")
    ap.add_argument(
        "--preset", default="presets/gpt-gpu.yaml", help="--gpu/--quality: the params file (--set edits it)"
    )
    ap.add_argument(
        "--attention", default="", help="--gpu: preferred SDPA backends in order, e.g. cudnn,flash"
    )
    ap.add_argument(
        "--profile", type=int, default=0, metavar="N", help="where N steps of the plain loop spend their time"
    )
    ap.add_argument("--skip-eager", action="store_true", help="--gpu: leave out the plain eager loop")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset parameter for --gpu/--quality, e.g. --set model.gpt.dropout=0.2",
    )
    args = ap.parse_args()
    if args.text == ap.get_default("text"):
        ensure_text(Path(args.text), args.params)
    if args.gpu:
        with attention_backends(args.attention):
            gpu_bench(args)
    if args.quality:
        quality(args)
    if not args.gpu and not args.quality:
        cpu_bench(args)


if __name__ == "__main__":
    main()
