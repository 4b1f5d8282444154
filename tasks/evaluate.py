"""evaluate: measure the trained model on the held-out test split, beside baselines and the champion;
register it; decide whether it becomes the champion; write its model card.

Outputs in artifacts/evaluate/: metrics.json (DVC metrics: `dvc metrics diff`), decision.json (promote,
reject or keep, with every check), pictures/ (samples.png or samples.txt with a fixed seed;
interpolation.png for the VAE), card.md and card.html (the model card), featurizer/ (the image
metrics' classifier, reused while the training data stays the same).

The champion is measured again on this run's split, so challenger and champion are compared on the
same data by the same featurizer, never against figures from an older split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prefect import task

from tasks import paths
from tasks.dvc_stage import publish_markdown, repro
from tasks.errors import GenloopError
from tasks.params import EvaluateParams, Params
from tasks.storage import read_json, sha256_file, write_json

OUT = paths.ARTIFACTS / "evaluate"
METRICS, DECISION = OUT / "metrics.json", OUT / "decision.json"
FEATURIZER, PICTURES = OUT / "featurizer", OUT / "pictures"
MODEL = paths.ARTIFACTS / "train" / "model"

# The figure each family is judged by first; lower is better.
HEADLINE = {"vae": "nll_bits_per_dim", "gan": "fd", "gpt": "bits_per_char"}
HIGHER_IS_BETTER = {"precision", "recall", "valid_word_rate"}
# Guarded against regression when a challenger meets the champion (besides the headline).
GUARDED = ("fd", "precision", "recall", "ngram_divergence", "valid_word_rate")
UNITS = {
    "nll_bits_per_dim": "bits/dim (8-bit pixels, importance-weighted bound)",
    "nll_nats": "nats/image",
    "bits_per_char": "bits/char",
    "fd": "Fréchet distance (featurizer space)",
    "precision": "k-NN precision",
    "recall": "k-NN recall",
    "diversity": "mean pairwise feature distance",
    "memorised": "share of samples counted as copies",
    "ngram_divergence": "Jensen-Shannon divergence of char n-grams (bits)",
    "valid_word_rate": "share of words seen in training",
}


@dataclass
class Split:
    """The evaluation data: test (measured on), train (copies of it are memorisation), val (the floor)."""

    meta: dict
    arrays: dict[str, tuple[np.ndarray, np.ndarray | None]]
    text: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.meta["kind"]


def load_split(processed: Path = paths.PROCESSED) -> Split:
    from tasks.trainer import load_splits

    meta, arrays = load_splits(processed, ("train", "val", "test"))
    if meta["kind"] == "image":
        return Split(meta, arrays)
    vocab = meta["vocab"]
    return Split(meta, arrays, {s: "".join(vocab[i] for i in a.tolist()) for s, (a, _) in arrays.items()})


# --- measuring ---------------------------------------------------------------------------------------
class Measure:
    """Everything a model is measured against, prepared once per run and shared by challenger,
    champion, baseline and the real-data floor."""

    def __init__(self, split: Split, ev: EvaluateParams) -> None:
        from tasks import metrics

        self.split, self.ev = split, ev
        if split.kind == "image":
            from tasks import featurizer

            (xtr, ytr), (xte, yte) = split.arrays["train"], split.arrays["test"]
            # its own fixed seed: the featurizer belongs to the data, not to one evaluation's settings
            self.features, self.featurizer = featurizer.ensure(FEATURIZER, (xtr, ytr), (xte, yte), seed=0)
            self.train_px, self.test_px = xtr / 255.0, xte / 255.0
            self.test_features = self.features(self.test_px)
            self.copy_threshold = metrics.copy_threshold(self.test_px, self.train_px, ev.copy_quantile)
        else:
            self.featurizer = {"kind": "none", "reason": "text is compared by character n-grams"}
            write_json(FEATURIZER / "featurizer.json", self.featurizer)  # the stage's output, always there
            self.train_words = set(metrics.words(split.text["train"]))
            self.spans = metrics.SpanIndex(split.text["train"], ev.text.copy_span)

    def samples(self, images: np.ndarray) -> dict:
        """Sample metrics of images (N, C, H, W) in [0, 1] against the test split."""
        from tasks import metrics

        f = self.features(images)
        precision, recall = metrics.precision_recall(self.test_features, f, self.ev.knn_k)
        return {
            "fd": metrics.frechet_distance(self.test_features, f),
            "precision": precision,
            "recall": recall,
            "diversity": metrics.diversity(f),
            "memorised": metrics.memorised_share(images, self.train_px, self.copy_threshold),
        }

    def texts(self, texts: list[str]) -> dict:
        from tasks import metrics

        return {
            "ngram_divergence": metrics.ngram_divergence(texts, self.split.text["test"], self.ev.text.ngram),
            "valid_word_rate": metrics.valid_word_rate(texts, self.train_words),
            "memorised": metrics.copied_share(texts, self.spans),
        }

    def model(self, model) -> tuple[dict, object]:
        """All metrics of a model, and its samples (images array or list of texts)."""
        import torch

        ev = self.ev
        if self.split.kind == "image":
            x, y = self.split.arrays["test"]
            condition = y.tolist() if model.data.get("classes") else None  # the test split's class mix
            images = model.sample(len(x), condition=condition, seed=ev.seed).cpu().numpy()
            out = self.samples(images)
            if hasattr(model, "nll"):
                xt = torch.as_tensor(x, dtype=torch.float32) / 255
                nll = model.nll(xt, torch.as_tensor(y) if condition else None, ev.importance_samples, ev.seed)
                out["nll_nats"] = float(nll.mean())
                out["nll_bits_per_dim"] = float(model.bits_per_dim(nll).mean())
            return out, images
        ids = torch.as_tensor(self.split.arrays["test"][0].astype(np.int64))
        raw = model.sample(ev.text.samples, seed=ev.seed, length=ev.text.length)
        prompt_len = len(raw[0]) - ev.text.length
        texts = [t[prompt_len:] for t in raw]  # judge what the model wrote, not the prompt
        return {"bits_per_char": model.bits_per_char(ids), **self.texts(texts)}, texts

    def floor(self) -> dict:
        """Held-out real data (val) measured like samples: the best a sample metric can be here."""
        if self.split.kind == "image":
            x = self.split.arrays["val"][0]
            n = min(len(x), len(self.test_px))
            return self.samples(x[:n] / 255.0)
        val, n, length = self.split.text["val"], self.ev.text.samples, self.ev.text.length
        starts = np.linspace(0, max(0, len(val) - length), n).astype(int)
        return self.texts([val[s : s + length] for s in starts])

    def baseline(self) -> dict:
        from tasks import baselines

        b = self.ev.baseline
        if self.split.kind == "image":
            xtr, xte = self.split.arrays["train"][0], self.split.arrays["test"][0]
            gmm = baselines.GaussianMixtureBaseline(b.gmm_components, self.ev.seed).fit(xtr)
            out = {"model": f"Gaussian mixture, {b.gmm_components} components, full covariance"}
            out |= {"nll_bits_per_dim": gmm.bits_per_dim(xte), **self.samples(gmm.sample(len(xte)))}
            return out
        ngram = baselines.CharNGram(b.ngram_order, self.split.meta["vocab"]).fit(self.split.text["train"])
        return {
            "model": f"character {b.ngram_order}-gram, Witten-Bell smoothing",
            "bits_per_char": ngram.bits_per_char(self.split.text["test"]),
        }


# --- the gate ----------------------------------------------------------------------------------------
def better(a: float, b: float, metric: str, margin: float = 0.0) -> bool:
    """Is a better than b by at least `margin` (in the metric's direction)?"""
    return a - b >= margin if metric in HIGHER_IS_BETTER else b - a >= margin


def decide(
    family: str,
    challenger: dict,
    baseline: dict,
    floor: dict,
    champion: dict | None,
    gate,
    same_as_champion: bool = False,
) -> dict:
    """promote / reject / keep, with every check that led there (each: name, passed, detail)."""
    headline = HEADLINE[family]
    checks: list[dict] = []

    def check(name: str, passed: bool, detail: str) -> None:
        checks.append({"check": name, "passed": bool(passed), "detail": detail})

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
        for metric in GUARDED:
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


# --- the stage -------------------------------------------------------------------------------------
def load_champion(tag: str | None, split: Split) -> tuple[object | None, str]:
    """The champion model, if it can be measured on this split (same data layout)."""
    import models
    from tasks import registry
    from tasks.trainer import data_description

    if tag is None:
        return None, "no champion yet"
    folder = registry.folder(tag)
    if models.describe(folder)["data"] != data_description(split.meta):
        return None, f"champion {tag} was trained on data of another layout (shape, classes or vocabulary)"
    return models.load(folder), ""


def pictures(model, out: Path, ev: EvaluateParams) -> list[Path]:
    """Fixed-seed samples (and the VAE's latent interpolations): same weights, same pictures."""
    from tasks.images import save_grid

    out.mkdir(parents=True, exist_ok=True)
    if model.family == "gpt":
        texts = model.sample(8, seed=ev.seed, length=ev.text.length)
        path = out / "samples.txt"
        path.write_text("\n\n----\n\n".join(texts) + "\n")
        return [path]
    cols = len(model.data.get("classes") or []) or 8
    made = [save_grid(model.sample(cols * 8, seed=ev.seed).cpu().numpy(), out / "samples.png", cols=cols)]
    if hasattr(model, "interpolate"):
        grid = model.interpolate(steps=10, rows=cols, seed=ev.seed).cpu().numpy()
        made.append(save_grid(grid, out / "interpolation.png", cols=10))
    return made


def run(params: Params) -> dict:
    import models
    from tasks import card, lineage, registry

    ev = params.require("evaluate")
    if not (MODEL / models.WEIGHTS).is_file():
        raise GenloopError(f"{MODEL} holds no exported model: run the train stage first (dvc repro train)")
    model = models.load(MODEL)
    split = load_split()
    if models.KIND[model.family] != split.kind:
        raise GenloopError(
            f"the trained {model.family} model does not fit the {split.kind} data in data/processed"
        )

    OUT.mkdir(parents=True, exist_ok=True)
    measure = Measure(split, ev)
    challenger, _ = measure.model(model)
    baseline, floor = measure.baseline(), measure.floor()

    name = registry.name_of(model.family)
    weights = sha256_file(MODEL / models.WEIGHTS)
    tag = f"{name}:{weights[:16]}"  # the version is the weights' hash: same weights, same version
    champion_tag = registry.champion(name)
    champion_model, champion_note = load_champion(champion_tag, split)
    champion = measure.model(champion_model)[0] if champion_model is not None else None
    decision = decide(model.family, challenger, baseline, floor, champion, ev.gate, champion_tag == tag)
    decision |= {"challenger": tag, "champion": champion_tag, "champion_note": champion_note}

    figures = {
        "family": model.family,
        "version": tag,
        "model": challenger,
        "baseline": baseline,
        "champion": champion,
        "floor": floor,
        "units": {k: v for k, v in UNITS.items() if k in challenger},
        "copy_quantile": ev.copy_quantile,
    }
    if split.kind == "image":
        figures["featurizer"] = {k: v for k, v in measure.featurizer.items() if k != "fingerprint"}
    made = pictures(model, PICTURES, ev)
    mp = params.require("model")
    trail = lineage.collect(
        {
            "model": {"family": mp.family, mp.family: mp.family_config()},
            "train": params.require("train").model_dump(),
        }
    )
    card_files = card.write(OUT, figures, decision, trail, made)

    metadata = {
        "lineage": trail,
        "metrics": challenger,
        "baseline": baseline,
        "decision": decision["decision"],
    }
    labels = {"family": model.family, "source": str(trail["source"]), "git": str(trail["git"]["commit"])[:12]}
    extra = {p.relative_to(OUT).as_posix(): p for p in [*made, *card_files]}
    registry.register(MODEL, model.family, tag.split(":")[1], metadata, labels, extra)
    if decision["decision"] == "promote":
        registry.promote(tag, "; ".join(decision["reasons"]))

    write_json(METRICS, {k: v for k, v in figures.items() if k != "units"} | {"units": figures["units"]})
    write_json(DECISION, decision)
    return {"version": tag, "decision": decision["decision"], "reasons": decision["reasons"], **challenger}


@task(name="evaluate")
def evaluate_task() -> dict:
    """Run the DVC stage `evaluate` and publish the model card in the Prefect UI."""
    repro("evaluate")
    decision = read_json(DECISION)
    publish_markdown("model-card", (OUT / "card.md").read_text(), f"Model card of {decision['challenger']}")
    return decision
