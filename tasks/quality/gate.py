"""The promotion gate: promote, reject or keep a challenger, with every check that led there.

A pure function of figures already measured (tested without any I/O): the family's headline metric
must beat the baseline's and the champion's; no sample metric the family guards may regress past a
tolerance against the champion; memorisation may not exceed what real unseen data scores by more than
a margin; and a version that a rollback demoted is not promoted again.
"""

from __future__ import annotations

import models
from tasks.core.params import Gate
from tasks.quality.metrics import HIGHER_IS_BETTER


def better(a: float, b: float, metric: str, margin: float = 0.0) -> bool:
    """Is a better than b by at least `margin` (in the metric's direction)?"""
    return a - b >= margin if metric in HIGHER_IS_BETTER else b - a >= margin


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
    """promote / reject / keep, with every check that led there (each: name, passed, detail)."""
    spec = models.family(family)
    headline = spec.headline
    checks: list[dict] = []

    def check(name: str, passed: bool, detail: str) -> None:
        checks.append({"check": name, "passed": bool(passed), "detail": detail})

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
    )
    if headline in baseline:
        a, b = challenger[headline], baseline[headline]
        check("beats baseline", better(a, b, headline), f"{headline} {a:.4g} vs baseline {b:.4g}")
    if champion is not None and not same_as_champion:
        a, b = challenger[headline], champion[headline]
        check(
            "beats champion",
            better(a, b, headline, gate.min_improvement),
            f"{headline} {a:.4g} vs champion {b:.4g} (needs {gate.min_improvement} better)",
        )
        for metric in spec.sample_metrics:
            if metric == headline or metric not in challenger or metric not in champion:
                continue
            a, b = challenger[metric], champion[metric]
            allowed = abs(b) * gate.max_regression
            check(
                f"no regression: {metric}",
                better(a, b, metric, -allowed),
                f"{a:.4g} vs champion {b:.4g} (at most {gate.max_regression:.0%} worse)",
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
