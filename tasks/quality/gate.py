"""The promotion gate: promote, reject or keep a challenger, with every check that led there.

A pure function of figures already measured (tested without any I/O). A challenger is promoted only if:
- its headline metric beats the baseline's (a degenerate baseline figure is replaced by the per-pixel
  model's, or fails the check: it never passes trivially) and the champion's;
- none of the family's sample metrics is worse than the baseline's, nor the champion's, by more than
  `max_regression` (relative): a model that wins on likelihood but draws worse samples than a classical
  model is not served;
- its samples' precision and recall (images) are at least the baseline's, less `max_pr_regression` of
  them (in place of `max_regression` against the baseline), or real held-out data's own if that is lower;
- its samples' Fréchet distance (images) is at most `max_fd_ratio` times the baseline's (in place of
  the `max_regression` tolerance for that metric), or real held-out data's own if that is higher: a
  model only a little closer to the data than a Gaussian mixture is not worth serving over it;
- it memorises no more than real unseen data does, plus a margin;
- a rollback has not demoted it.
Each check names its metric and carries the challenger's, the baseline's, the champion's and real
data's figure, so decision.json and the model card show all four.
"""

from __future__ import annotations

import math

import models
from tasks.core.params import Gate
from tasks.quality.metrics import HIGHER_IS_BETTER

# Baseline figures a degenerate one may be replaced by: the per-pixel model's likelihood is always sane.
STAND_INS = {"nll_bits_per_dim": ("per_pixel_bits_per_dim", "the per-pixel model's")}
PR_METRICS = ("precision", "recall")  # images: held to the baseline's by max_pr_regression


def better(a: float, b: float, metric: str, margin: float = 0.0) -> bool:
    """Is a better than b by at least `margin` (in the metric's direction)?"""
    return a - b >= margin if metric in HIGHER_IS_BETTER else b - a >= margin


def within(a: float, b: float, metric: str, gate: Gate) -> bool:
    """Is a no worse than b by more than gate.max_regression (relative to b)?"""
    return better(a, b, metric, -abs(b) * gate.max_regression)


def fd_limit(baseline_fd: float, floor: dict, gate: Gate) -> float:
    """The highest Fréchet distance the gate accepts: its ratio of the baseline's, or real held-out
    data's own where that is higher (a model as close to the data as real images is never refused)."""
    return max(baseline_fd * gate.max_fd_ratio, floor.get("fd", -math.inf))


def pr_limit(baseline: float, metric: str, floor: dict, gate: Gate) -> float:
    """The lowest precision or recall the gate accepts: the baseline's less its `max_pr_regression`, or
    real held-out data's own where that is lower (a model as close to the data as real images is never
    refused)."""
    return min(baseline * (1 - gate.max_pr_regression), floor.get(metric, math.inf))


def near_enough(a: float, b: float, metric: str, floor: dict, gate: Gate) -> bool:
    """Is the challenger's a close enough to the data, against the baseline's b? The Fréchet distance
    must reach its limit (fd_limit), precision and recall theirs (pr_limit), every other metric be within
    the gate's tolerance."""
    if metric == "fd":
        return a <= fd_limit(b, floor, gate)
    if metric in PR_METRICS:
        return a >= pr_limit(b, metric, floor, gate)
    return within(a, b, metric, gate)


def _against(metric: str, b: float, floor: dict, gate: Gate) -> str:
    if metric == "fd":
        return f"baseline {_num(b)} (at most {gate.max_fd_ratio:g}x: {_num(fd_limit(b, floor, gate))})"
    if metric in PR_METRICS:
        return f"baseline {_num(b)} (at least {_num(pr_limit(b, metric, floor, gate))})"
    return f"baseline {_num(b)} (at most {gate.max_regression:.0%} worse)"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def decide(
    family: str,
    challenger: dict,
    baseline: dict,
    floor: dict,
    champion: dict | None,
    gate: Gate,
    same_as_champion: bool = False,
    rolled_back: dict | None = None,
) -> dict:
    """promote / reject / keep, with every check that led there (each: check, passed, detail, and the
    metric with its four figures when it compares one)."""
    spec = models.family(family)
    headline = spec.headline
    degenerate = set(baseline.get("degenerate", []))
    rival = champion if champion is not None and not same_as_champion else None
    checks: list[dict] = []

    def check(name: str, passed: bool, detail: str, metric: str | None = None, **base) -> None:
        row = {"check": name, "passed": bool(passed), "detail": detail}
        if metric is not None:
            row |= {"metric": metric, "model": challenger.get(metric), "baseline": base.get("value"),
                    "champion": (champion or {}).get(metric), "floor": floor.get(metric)}  # fmt: skip
        checks.append(row)

    if rolled_back is not None and not same_as_champion:
        check(
            "not rolled back",
            False,
            f"a rollback demoted this version at {rolled_back.get('at')} "
            f"(back to {rolled_back.get('restored')}); it stays out until a new model passes the gate",
        )
    mem, real = challenger["memorised"], floor.get("memorised", 0.0)
    check(
        "memorisation",
        mem <= real + gate.max_memorised,
        f"{mem:.3f} of samples count as copies of training data; real unseen data {real:.3f}, "
        f"limit {real:.3f} + {gate.max_memorised}",
        "memorised",
        value=baseline.get("memorised"),
    )
    # the headline against the baseline: strictly better
    if headline in baseline:
        a, b = challenger[headline], baseline[headline]
        against = f"baseline {_num(b)}"
        if headline in degenerate:
            stand_in, whose = STAND_INS.get(headline, (None, ""))
            replacement = baseline.get(stand_in, math.nan) if stand_in else math.nan
            against = f"{whose} {_num(replacement)}, the baseline's {_num(b)} being degenerate"
            b = replacement
        if math.isfinite(b):
            if headline == "fd":  # the GAN's headline: beaten by the gate's margin, not by a hair
                against = _against(headline, b, floor, gate)
            check(
                "beats baseline",
                better(a, b, headline) and (headline != "fd" or a <= fd_limit(b, floor, gate)),
                f"{headline} {_num(a)} vs {against}",
                headline,
                value=b,
            )
        else:
            check("beats baseline", False, f"{headline}: the baseline's figure is degenerate ({against})",
                  headline, value=b)  # fmt: skip
    # the sample metrics against the baseline: no worse than it beyond the tolerance
    for metric in spec.sample_metrics:
        if metric == headline or metric not in challenger or metric not in baseline:
            continue
        a, b = challenger[metric], baseline[metric]
        if metric in degenerate or not math.isfinite(b):
            check(f"samples vs baseline: {metric}", False,
                  f"the baseline's {metric} ({_num(b)}) is degenerate: nothing to compare with",
                  metric, value=b)  # fmt: skip
            continue
        check(
            f"samples vs baseline: {metric}",
            near_enough(a, b, metric, floor, gate),
            f"{_num(a)} vs {_against(metric, b, floor, gate)}; real data {_num(floor.get(metric))}",
            metric,
            value=b,
        )
    if rival is not None:
        a, b = challenger[headline], rival[headline]
        check(
            "beats champion",
            better(a, b, headline, gate.min_improvement),
            f"{headline} {_num(a)} vs champion {_num(b)} (needs {gate.min_improvement} better)",
            headline,
            value=baseline.get(headline),
        )
        for metric in spec.sample_metrics:
            if metric == headline or metric not in challenger or metric not in rival:
                continue
            a, b = challenger[metric], rival[metric]
            check(
                f"no regression: {metric}",
                within(a, b, metric, gate),
                f"{_num(a)} vs champion {_num(b)} (at most {gate.max_regression:.0%} worse)",
                metric,
                value=baseline.get(metric),
            )
    passed = all(c["passed"] for c in checks)
    verdict = "keep" if same_as_champion else "promote" if passed else "reject"
    return {
        "decision": verdict,
        "headline_metric": headline,
        "checks": checks,
        "reasons": [f"{c['check']}: {c['detail']}" for c in checks if not c["passed"]]
        or ["these weights are already the champion" if same_as_champion else "every check passed"],
    }
