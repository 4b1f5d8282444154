"""The registered model families: what the rest of genloop must know about each, read without torch.

A family is one file in models/ (its `Model` class) plus one entry here: the keys of its section in
params.yaml (a Config dataclass: types and bounds, no defaults, since params.yaml holds the values) and
the facts that evaluate, the model card, `genloop status` and the service rely on (its data kind,
headline metric, baseline, how its samples are pictured, what it is for). Adding a family is a new file
and a new entry in FAMILIES; tests/test_models.py checks every entry is complete.

Bounds live in each field's metadata (`ge`, `gt`, `lt`, `choices`, and `min_length`, `max_length` of a
list; of a list field, the others bound each item; `auto`: the value may be `auto`, which the family
resolves from the data when it builds the model): params loading turns them into its checks, so this
module needs nothing beyond the standard library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class VAEConfig:
    # conv: convolutional encoder and decoder | mlp: fully connected
    arch: str = field(metadata={"choices": ("conv", "mlp")})
    # auto (here and below): from the images' size and channels, when the model is built (models/shaping.py)
    latent_dim: int = field(metadata={"ge": 1, "auto": True})
    # conv: the widths of its stride-2 stages, one per stage
    channels: list[int] = field(metadata={"min_length": 1, "max_length": 6, "ge": 1, "auto": True})
    hidden: list[int] = field(metadata={"min_length": 1, "ge": 1})  # MLP widths, encoder order
    dropout: float = field(metadata={"ge": 0, "lt": 1})
    beta: float = field(metadata={"gt": 0})  # weight of the KL term; 1 is the true ELBO
    # p(z | class): 0 = a standard normal; K = a learned mixture of K Gaussians per class,
    # which samples from where the encoder puts the data instead of from holes of a fixed prior
    prior_components: int = field(metadata={"ge": 0})
    # of each component: full (the encoder's latents are correlated) | diag
    prior_covariance: str = field(metadata={"choices": ("diag", "full")})


@dataclass(frozen=True)
class GANConfig:
    latent_dim: int = field(metadata={"ge": 1})
    width: int = field(metadata={"ge": 4})  # channels of the widest conv layer
    stages: int = field(metadata={"ge": 2, "le": 6, "auto": True})  # stride-2 stages of each network
    d_steps: int = field(metadata={"ge": 1})  # discriminator updates per generator update
    lr_d_factor: float = field(metadata={"gt": 0})  # discriminator learning rate = train.lr * this
    dropout: float = field(metadata={"ge": 0, "lt": 1})  # in the discriminator
    # DiffAugment (Zhao et al. 2020): what the discriminator sees of real and generated images alike,
    # so it cannot memorise a small training set, and nothing of it leaks into the samples
    diff_augment: list[str] = field(metadata={"choices": ("translation", "cutout")})


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = field(metadata={"ge": 2})  # context length T
    n_layer: int = field(metadata={"ge": 1})
    n_head: int = field(metadata={"ge": 1})
    n_embd: int = field(metadata={"ge": 1})  # C
    dropout: float = field(metadata={"ge": 0, "lt": 1})
    bias: bool = field()
    # learned: an embedding per position (GPT-2) | rope: rotary, attention sees relative positions
    position: str = field(metadata={"choices": ("learned", "rope")})
    fp32_residual: bool = field()  # False: under bf16 autocast the residual stream is bf16 too
    temperature: float = field(metadata={"ge": 0})  # sampling default
    top_k: int = field(metadata={"ge": 0})  # sampling default; 0 = no top-k filter
    # dropout of the attention weights; None = `dropout` (models exported before this key had that)
    attn_dropout: float | None = field(default=None, metadata={"ge": 0, "lt": 1})


@dataclass(frozen=True)
class Family:
    """Everything outside models/ needs to know about a family, in one place."""

    name: str
    module: str  # where its `Model` class lives
    config: type  # the keys of model.<name> in params.yaml
    kind: str  # the data it models: "image" | "text"
    headline: str  # the metric evaluate judges it by first (lower is better)
    heldout_unit: str  # unit of its validation loss (val_loss) during training
    baseline: str  # the classical model it must beat: "gaussian_mixture" | "char_ngram"
    sample_metrics: tuple[str, ...]  # metrics of its samples that the gate guards
    pictures: tuple[str, ...]  # what its samples look like for people: "grid", "interpolation", "text"
    intended_use: str
    limitations: str
    # config keys added after models were exported, with the value those older exports meant
    legacy: dict[str, Any] = field(default_factory=dict)

    def config_keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config)]

    def required_keys(self) -> list[str]:
        """The config keys without a default: every exported model has them."""
        missing = dataclasses.MISSING
        fields = dataclasses.fields(self.config)
        return [f.name for f in fields if f.default is missing and f.default_factory is missing]


IMAGE_SAMPLE_METRICS = ("fd", "precision", "recall")
TEXT_SAMPLE_METRICS = ("ngram_divergence", "valid_word_rate")

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="vae",
            module="models.vae",
            config=VAEConfig,
            kind="image",
            headline="nll_bits_per_dim",
            heldout_unit="bits/dim (negative ELBO, a bound on the 8-bit NLL)",
            baseline="gaussian_mixture",
            sample_metrics=IMAGE_SAMPLE_METRICS,
            pictures=("grid", "interpolation"),
            legacy={"prior_components": 0, "prior_covariance": "diag", "arch": "mlp", "channels": [32, 64]},
            intended_use="Generating small class-conditional images like the training data, smooth latent "
            "interpolation, and likelihood scoring of new images of the same kind (e.g. flagging unusual "
            "inputs).",
            limitations="Each pixel is drawn from the decoder's Gaussian: samples can be blurrier and "
            "grainier than real images, and fine detail varies more than class and layout. "
            "Likelihoods are only comparable on images of the same size and preprocessing.",
        ),
        Family(
            name="gan",
            module="models.gan",
            config=GANConfig,
            kind="image",
            headline="fd",
            heldout_unit="MMD^2 to validation images (pixels)",
            baseline="gaussian_mixture",
            sample_metrics=IMAGE_SAMPLE_METRICS,
            pictures=("grid",),
            legacy={"diff_augment": [], "stages": 2},
            intended_use="Generating small class-conditional images like the training data.",
            limitations="A GAN has no likelihood: it can drop modes without any held-out loss showing it; "
            "watch recall and diversity. Not for scoring or detecting unusual inputs.",
        ),
        Family(
            name="gpt",
            module="models.gpt",
            config=GPTConfig,
            kind="text",
            headline="bits_per_char",
            heldout_unit="bits/char",
            baseline="char_ngram",
            sample_metrics=TEXT_SAMPLE_METRICS,
            pictures=("text",),
            intended_use="Generating text in the style of its training corpus from a prompt; scoring text "
            "by bits per character.",
            limitations="A small character model: fluent-looking but not factual, it can repeat its "
            "training text (see memorisation) and only knows the characters of its vocabulary.",
            legacy={"position": "learned", "fp32_residual": True},
        ),
    )
}


def family(name: str) -> Family:
    """The registered family `name`; an unknown name is a ValueError listing the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (choose from {', '.join(FAMILIES)})")
    return FAMILIES[name]


def for_kind(kind: str) -> list[str]:
    """The families that model data of `kind` ("image" or "text")."""
    return [name for name, f in FAMILIES.items() if f.kind == kind]


# What `model.family: auto` trains. Text: the GPT. Images: the family whose samples were closest to the
# data (Fréchet distance) on folders of that size in `bench/quality.py --folders` (docs/benchmarks.md,
# Quality on several folders). On 8x8 digits, the VAE (FD 10.0 against the GAN's 11.3, in 23 s against
# 59); on every larger folder, the GAN: 16x16 shapes 8.2 against 87.2, 28x28 strokes 24.5 against 41.7,
# 32x32 colour photographs 63.4 against 397.7. A size not known yet (S3 before its first collect) counts
# as larger: a user's images mostly are, and the model line then keeps its name across that collect.
AUTO_VAE_MAX_SIDE = 8


def auto_family(kind: str, size: tuple[int, int] | None = None) -> str:
    """The family `model.family: auto` trains on data of `kind` whose images are `size` (height, width)."""
    if kind == "text":
        return "gpt"
    return "vae" if size is not None and max(size) <= AUTO_VAE_MAX_SIDE else "gan"
