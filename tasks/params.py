"""Typed view of `params.yaml`: one model per section, unknown or ill-typed keys rejected by name."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.errors import GenloopError

PARAMS_FILE = "params.yaml"
BUILTIN_SOURCES = ("sklearn:digits", "pydoc:topics")


class Section(BaseModel):
    # strict: "8" is not an int, 1 is not a float-typed string; extra keys are an error.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(Section):
    source: str = "sklearn:digits"

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        builtin = v.startswith(("sklearn:", "pydoc:"))
        if (builtin and v not in BUILTIN_SOURCES) or ("://" in v and not v.startswith("s3://")):
            raise ValueError(
                f"unknown source (use {', '.join(BUILTIN_SOURCES)}, s3://bucket/prefix or a folder)"
            )
        if v.startswith("s3://") and not v[5:].split("/")[0]:
            raise ValueError("an S3 source needs a bucket: s3://bucket/prefix")
        return v


class CollectParams(Section):
    workers: int = Field(8, ge=1, le=64)
    retries: int = Field(5, ge=1, le=20)
    timeout_s: float = Field(10.0, gt=0)


class ImageExpectations(Section):
    height: int = Field(8, ge=1)
    width: int = Field(8, ge=1)
    channels: Literal[1, 3] = 1
    labels: list[int] | list[str] | None = None
    min_per_class: int = Field(20, ge=0)
    max_duplicate_rate: float = Field(0.05, ge=0, le=1)


class TextExpectations(Section):
    min_chars: int = Field(10_000, ge=1)
    min_charset_coverage: float = Field(0.99, ge=0, le=1)
    charset: Literal["printable-ascii", "any"] = "printable-ascii"
    max_pii_file_rate: float = Field(0.0, ge=0, le=1)


class ValidateParams(Section):
    image: ImageExpectations = ImageExpectations()
    text: TextExpectations = TextExpectations()


class ImageAugment(Section):
    factor: int = Field(2, ge=0, le=50)
    max_shift: int = Field(1, ge=0)
    max_rotation_deg: float = Field(10.0, ge=0, le=180)
    noise_std: float = Field(0.03, ge=0)


class AugmentParams(Section):
    seed: int = 1337
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.1, gt=0, lt=1)
    image: ImageAugment = ImageAugment()


# Model sections: types only. The values live in params.yaml (defaults for library use in models/).
class VAEParams(Section):
    latent_dim: int = Field(ge=1)
    hidden: list[int] = Field(min_length=1)
    dropout: float = Field(ge=0, lt=1)
    beta: float = Field(gt=0)


class GANParams(Section):
    latent_dim: int = Field(ge=1)
    width: int = Field(ge=4)
    d_steps: int = Field(ge=1)
    lr_d_factor: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)


class GPTParams(Section):
    block_size: int = Field(ge=2)
    n_layer: int = Field(ge=1)
    n_head: int = Field(ge=1)
    n_embd: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    bias: bool
    position: Literal["learned", "rope"]
    fp32_residual: bool
    temperature: float = Field(ge=0)
    top_k: int = Field(ge=0)


class ModelParams(Section):
    family: Literal["vae", "gan", "gpt"]
    vae: VAEParams | None = None
    gan: GANParams | None = None
    gpt: GPTParams | None = None

    def family_config(self) -> dict:
        section = getattr(self, self.family)
        if section is None:
            raise GenloopError(
                f"params.yaml: model.family is {self.family} but there is no model.{self.family} section"
            )
        return section.model_dump()


class TrainParams(Section):
    seed: int
    max_epochs: int = Field(ge=1)
    steps_per_epoch: int | None = Field(ge=1)  # None: one pass over the training images (text: 100)
    steps_per_execution: int = Field(ge=1)  # optimizer steps per Lightning step
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_steps: int = Field(ge=0)
    schedule: Literal["cosine", "constant"]
    grad_clip: float = Field(ge=0)  # 0 = off
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"]
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"]
    devices: int | Literal["auto"]
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp"]
    num_nodes: int = Field(ge=1)
    # torch.compile: true (its default mode) or a mode by name; false = eager
    compile: Literal[False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
    early_stopping_patience: int = Field(ge=0)  # epochs without improvement; 0 = off
    sample_every_n_epochs: int = Field(ge=0)  # 0 = only at the end
    val_batches: int | None = Field(ge=1)  # None = the whole validation split
    init_from: str | None  # an exported model folder, or a registered version (genloop-gpt:champion)
    ema_decay: float | None = Field(gt=0, lt=1)  # EMA of the weights per optimizer step; None = off


class EvaluateText(Section):
    samples: int = Field(ge=1)  # texts generated per model
    length: int = Field(ge=10)  # characters per text
    ngram: int = Field(ge=1)  # n of the character n-gram distributions compared
    copy_span: int = Field(ge=8)  # a verbatim training span this long counts as a copy


class EvaluateBaseline(Section):
    gmm_components: int = Field(ge=1)
    ngram_order: int = Field(ge=1, le=8)


class Gate(Section):
    max_memorised: float = Field(ge=0, le=1)  # copies beyond the share real unseen data scores
    min_improvement: float = Field(ge=0)  # the headline metric must beat the champion's by this much
    max_regression: float = Field(ge=0)  # relative worsening allowed on every other metric


class EvaluateParams(Section):
    seed: int
    importance_samples: int = Field(ge=1)  # VAE likelihood bound (IWAE k)
    knn_k: int = Field(ge=1)  # precision / recall neighbourhoods
    copy_quantile: float = Field(gt=0, lt=1)  # images: what counts as "as close as a copy"
    text: EvaluateText
    baseline: EvaluateBaseline
    gate: Gate


class PackageParams(Section):
    gpu: bool  # the model service asks for one GPU (and uses it when present)


class ServeParams(Section):
    host: str
    port: int = Field(ge=1, le=65535)
    batching: bool
    max_batch_size: int = Field(ge=1)
    max_latency_ms: int = Field(ge=1)
    max_samples: int = Field(ge=1, le=1024)
    max_length: int = Field(ge=1, le=100_000)
    max_prompt: int = Field(ge=0)
    max_concurrency: int = Field(ge=1)
    timeout_s: float = Field(gt=0)
    max_body_bytes: int = Field(ge=256)
    ready_timeout_s: float = Field(gt=0)  # deploy waits this long for /readyz
    docs: bool  # BentoML's API docs page at /


class Params(Section):
    data: DataParams = DataParams()
    collect: CollectParams = CollectParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    augment: AugmentParams = AugmentParams()
    model: ModelParams | None = None
    train: TrainParams | None = None
    evaluate: EvaluateParams | None = None
    package: PackageParams | None = None
    serve: ServeParams | None = None

    def require(self, section: str):
        value = getattr(self, section)
        if value is None:
            raise GenloopError(f"params.yaml has no {section} section")
        return value

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            got = e.get("input")
            lines.append(f"  {key}: {e['msg']} (got {got!r})")
    return "\n".join(lines)


def parse(raw: dict, origin: str = PARAMS_FILE) -> Params:
    """Validate a parsed params mapping; every offending key is named in the error."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise GenloopError(f"invalid parameters in {origin}:\n{_describe(err)}") from None


def load(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate `params.yaml` (float fields accept integers; nothing else is coerced)."""
    path = Path(path)
    if not path.is_file():
        raise GenloopError(f"{path} not found: run genloop from the project folder (where params.yaml is)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise GenloopError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise GenloopError(f"{path} must be a mapping of sections")
    return parse(raw, str(path))
