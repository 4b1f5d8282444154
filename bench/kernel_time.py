"""Where a training step's time goes: torch.profiler over a few steps, kernel time grouped by kind.

On a GPU the kernels' own device time, by kind (matmuls, attention, pointwise and reduction kernels
fused by torch.compile or not, the optimizer, copies), and the share of the step the GPU sat idle
waiting for the host (what CUDA graphs, `train.compile: reduce-overhead`, would remove). On a CPU the
operators' own time, by phase: backward (run by the autograd engine), optimizer (inside Optimizer.step)
and the rest.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import torch

# First match wins: the optimizer's foreach kernels before the generic ones, attention before matmul.
KINDS = (
    ("optimizer, clipping", r"adam|multi_tensor|foreach|clip_grad|lpnorm"),
    ("attention", r"flash|fmha|attention|sdpa|scaled_dot|cudnn"),
    ("matmul", r"gemm|xmma|cutlass|cublas|sm\d+_|triton_tem|\bmm\b|aten::(mm|addmm|bmm|matmul|linear)"),
    ("reductions (norms, loss)", r"triton_(red|per)_|layer_norm|reduce|softmax|cross_entropy|nll"),
    ("copies, casts, fills", r"memcpy|memset|fillfunctor|copy_kernel|catarray"),
    ("pointwise", r"triton_poi_|elementwise|gelu|add|mul|dropout"),
)


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, pattern in KINDS if re.search(pattern, lowered)), "other")


def breakdown(run: Callable[[int], None], steps: int, top: int = 12) -> str:
    """Profile `run(steps)` (already warmed up: no compilation inside) and return the table."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        run(steps)
        if cuda:
            torch.cuda.synchronize()
        wall_us = (time.perf_counter() - start) * 1e6
    if cuda:  # (name, kind, microseconds): kernels are named by what they compute
        kernels = [e for e in prof.key_averages() if _on_device(e)]
        rows = [(e.key, kind_of(e.key), e.self_device_time_total) for e in kernels]
        return table(rows, wall_us, steps, top, "GPU kernel", "kind", idle=True)
    phases: dict[tuple[str, str], float] = {}  # CPU operators are not: an operator's phase is its caller's
    for e in prof.events():
        key = (e.name, phase_of(e))
        phases[key] = phases.get(key, 0.0) + e.self_cpu_time_total
    rows = [(name, phase, t) for (name, phase), t in phases.items()]
    return table(rows, wall_us, steps, top, "CPU operator", "phase", idle=False)


def _on_device(event) -> bool:
    return event.device_type != torch.autograd.DeviceType.CPU and event.self_device_time_total > 0


def phase_of(event) -> str:
    """optimizer, backward, or the rest: forward, loss, gradient clipping, batch gathering."""
    node = event
    while node is not None:
        if node.name.startswith("Optimizer."):
            return "optimizer"
        if node.name.startswith("autograd::engine"):
            return "backward"
        node = node.cpu_parent
    return "forward, clipping"


def table(
    rows: list[tuple[str, str, float]], wall_us: float, steps: int, top: int, unit: str, by: str, idle: bool
) -> str:
    """Per-group and top-`top` rows in ms per step and share of the busy time; then idle time."""
    busy = sum(t for *_, t in rows) or 1.0
    groups: dict[str, float] = {}
    for _, group, t in rows:
        groups[group] = groups.get(group, 0.0) + t
    lines = [f"{unit} time per step, by {by} ({steps} steps):"]
    for group, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {group:32s} {t / steps / 1e3:8.2f} ms  {100 * t / busy:5.1f}%")
    lines.append(f"  {'busy':32s} {busy / steps / 1e3:8.2f} ms of {wall_us / steps / 1e3:.2f} ms a step")
    if idle:
        share = f"{100 * max(0.0, 1 - busy / wall_us):5.1f}% of the step (profiler overhead included)"
        lines.append(f"  {'idle (waiting for the host)':32s} {share}")
    lines.append(f"top {top} {unit}s:")
    for name, group, t in sorted(rows, key=lambda row: -row[2])[:top]:
        short = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"  {t / steps / 1e3:8.3f} ms  {100 * t / busy:5.1f}%  [{group}] {short}")
    return "\n".join(lines)
