"""The monitor's checks: a window's features against a reference, by effect size, through Evidently 0.7.

Each feature is judged by the method params name (monitor.methods), whose threshold is an effect size,
not a p-value, so a large window does not turn a negligible shift into an alarm:
- a per-sample statistic (images: mean, spread, ink): an Evidently `ValueDrift` with Wasserstein
  distance in units of the reference's standard deviation;
- a distribution of categories (requested labels; text: the character classes and hashed bigrams of a
  window's texts, summed over it, so texts of any length compare): `ValueDrift` with Jensen-Shannon
  distance or PSI on the counts;
- an embedding (images: the featurizer's): the maximum mean discrepancy, by Evidently's own MMD method
  called directly on at most `max_rows` rows a side. Its `EmbeddingsDrift` metric also draws a t-SNE
  (~30 s on 1.5k x 16): that plot is added only with monitor.embedding_plot.
A check finds drift when any of its features does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NOT_ENOUGH = "not enough data"
TEXT_CLASSES = ("lower", "upper", "digit", "space", "punctuation", "other")
EXPANDED_ROWS = 20_000  # a distribution's counts become this many category rows for Evidently


@dataclass
class Check:
    """One check's verdict on one window."""

    name: str
    status: str  # "drift" | "ok" | NOT_ENOUGH | "no reference" | "no data"
    sizes: dict[str, int] = field(default_factory=dict)  # reference and current sample counts
    features: list[dict] = field(default_factory=list)  # feature, method, score, threshold, drifted
    note: str = ""
    snapshot: object = None  # the Evidently snapshot, for the HTML report
    plot: object = None  # Evidently's embeddings snapshot with its t-SNE (monitor.embedding_plot)

    @property
    def drifted(self) -> list[str]:
        return [f["feature"] for f in self.features if f["drifted"]]

    @property
    def score(self) -> float | None:
        """The largest score relative to its threshold (1 or more: drift), for charts over time."""
        ratios = [f["score"] / f["threshold"] for f in self.features if f["threshold"]]
        return max(ratios) if ratios else None

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "status": self.status,
            "drift": self.status == "drift",
            "score": self.score,
            "sizes": self.sizes,
            "drifted": self.drifted,
            "features": self.features,
            "note": self.note,
        }


def feature(name: str, method: str, score: float, threshold: float, **extra) -> dict:
    """One feature's line in a check: drifted at or above its threshold."""
    return {
        "feature": name,
        "method": method,
        "score": round(float(score), 5),
        "threshold": threshold,
        "drifted": bool(score >= threshold),
    } | extra


def _report(metrics: list, reference, current):
    """Run one Evidently Report over two DataFrames; returns (snapshot, one result dict per metric)."""
    from evidently import Report

    snapshot = Report(metrics).run(current, reference)
    return snapshot, snapshot.dict()["metrics"]


def _value(result: dict) -> float:
    value = result["value"]
    return float(value if not isinstance(value, dict) else value.get("value", np.nan))


def compare(
    name: str,
    reference: dict[str, np.ndarray],
    current: dict[str, np.ndarray],
    methods: dict,
    min_samples: int,
    max_rows: int,
    embedding_plot: bool = False,
) -> Check:
    """Compare the parts of a window with the reference's. Each side maps:
    - "stats": a DataFrame-like dict {statistic: (N,) values} of per-sample numbers;
    - "counts": {distribution name: {category: count}}, summed over the window;
    - "embedding": (N, D) vectors.
    `methods` is params' monitor.methods: {"numeric", "categorical", "embedding"} -> method, threshold."""
    import pandas as pd
    from evidently.metrics import ValueDrift

    n_ref, n_cur = int(reference.get("n", 0)), int(current.get("n", 0))
    check = Check(name, "ok", {"reference": n_ref, "current": n_cur})
    if n_cur < min_samples:
        check.status, check.note = NOT_ENOUGH, f"{n_cur} samples in the window, fewer than {min_samples}"
        return check
    metrics, columns, ref_frame, cur_frame = [], [], {}, {}
    numeric, categorical = methods["numeric"], methods["categorical"]
    for stat in reference.get("stats", {}):
        ref_frame[stat], cur_frame[stat] = reference["stats"][stat], current["stats"][stat]
        metrics.append(ValueDrift(column=stat, method=numeric["method"], threshold=numeric["threshold"]))
        columns.append((stat, numeric))
    ref_rows, cur_rows = {}, {}
    for dist, counts in reference.get("counts", {}).items():
        ref_rows[dist] = _expand(counts)
        cur_rows[dist] = _expand(current["counts"][dist], categories=list(counts))
        metrics.append(
            ValueDrift(column=dist, method=categorical["method"], threshold=categorical["threshold"])
        )
        columns.append((dist, categorical))
    if metrics:
        ref_df = _frame(ref_frame, ref_rows)
        cur_df = _frame(cur_frame, cur_rows)
        check.snapshot, results = _report(metrics, ref_df, cur_df)
        for (column, method), result in zip(columns, results, strict=True):
            check.features.append(feature(column, method["method"], _value(result), method["threshold"]))
    if reference.get("embedding") is not None and current.get("embedding") is not None:
        check.features.append(
            _mmd(reference["embedding"], current["embedding"], methods["embedding"], max_rows)
        )
        if embedding_plot:
            check.plot = _embedding_report(reference["embedding"], current["embedding"], pd)
    check.status = "drift" if check.drifted else "ok"
    return check


def _expand(counts: dict, categories: list | None = None) -> np.ndarray:
    """Counts -> EXPANDED_ROWS category labels in the same proportions (exact up to rounding), so that
    Evidently's categorical methods, which count rows, see the distribution itself."""
    keys = categories or list(counts)
    values = np.array([max(float(counts.get(k, 0.0)), 0.0) for k in keys])
    total = values.sum()
    if total <= 0:
        return np.array([], dtype=object)
    repeats = np.round(values / total * EXPANDED_ROWS).astype(int)
    return np.repeat(np.array([str(k) for k in keys], dtype=object), repeats)


def _frame(numbers: dict, categories: dict):
    """One DataFrame of unequal columns: each padded with missing values, which Evidently drops."""
    import pandas as pd

    columns = {k: pd.Series(np.asarray(v, dtype=np.float64)) for k, v in numbers.items()}
    columns |= {k: pd.Series(v, dtype="object") for k, v in categories.items()}
    return pd.DataFrame(columns)


def _mmd(reference: np.ndarray, current: np.ndarray, method: dict, max_rows: int) -> dict:
    """Evidently's MMD drift method on at most max_rows rows of each side (a fixed draw)."""
    import pandas as pd
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import MMDDriftMethod

    rng = np.random.default_rng(0)
    ref = reference[rng.permutation(len(reference))[:max_rows]]
    cur = current[rng.permutation(len(current))[:max_rows]]
    score, _, _ = MMDDriftMethod(threshold=method["threshold"])(pd.DataFrame(cur), pd.DataFrame(ref))
    return feature("embedding", "mmd", score, method["threshold"])


def _embedding_report(reference: np.ndarray, current: np.ndarray, pd):
    """Evidently's EmbeddingsDrift metric, for its t-SNE picture (slow: only when asked for)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift

    cols = [f"e{i}" for i in range(reference.shape[1])]
    definition = DataDefinition(numerical_columns=cols, embeddings={"embedding": cols})
    ref = Dataset.from_pandas(pd.DataFrame(reference, columns=cols), data_definition=definition)
    cur = Dataset.from_pandas(pd.DataFrame(current, columns=cols), data_definition=definition)
    return Report([EmbeddingsDrift(embeddings_name="embedding")]).run(cur, ref)


def text_counts(stats: np.ndarray, embedding: np.ndarray, names: tuple[str, ...]) -> dict[str, dict]:
    """A window's texts as two distributions summed over it: character classes and hashed bigrams."""
    col = {n: stats[:, i].astype(np.float64) for i, n in enumerate(names)}
    length = col["length"]
    letters, upper = col["letters"] * length, col["upper"] * length
    parts = {
        "lower": letters - upper,
        "upper": upper,
        "digit": col["digits"] * length,
        "space": col["spaces"] * length,
        "punctuation": col["punctuation"] * length,
    }
    parts["other"] = length - sum(parts.values())
    classes = {k: float(np.clip(v, 0, None).sum()) for k, v in parts.items()}
    bigrams = (embedding.astype(np.float64) * np.clip(length - 1, 0, None)[:, None]).sum(0)
    return {"characters": classes, "bigrams": {f"b{i}": float(c) for i, c in enumerate(bigrams)}}


def save_html(checks: list[Check], path: Path) -> bool:
    """Every check's Evidently widgets on one self-contained page (Evidently's scripts and fonts inline,
    3.7 MB of them: once a run, not once a check), a section per check, drawn by Evidently's own
    renderer as `Snapshot.save_html` draws one. Returns whether there was anything to draw."""
    from evidently.core.metric_types import render_widgets
    from evidently.legacy.renderers.html_widgets import group_widget

    sections = []
    for check in checks:
        widgets = [w for snap in (check.snapshot, check.plot) if snap is not None for w in snap._widgets]
        if widgets:  # a snapshot's parts, as its own save_html draws them
            sections.append(group_widget(title=f"{check.name}: {check.status}", widgets=widgets))
    if not sections:
        return False
    path.write_text(render_widgets(sections, as_iframe=False), encoding="utf-8")
    return True
