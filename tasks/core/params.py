"""Typed view of `params.yaml`: one model per section, unknown or ill-typed keys rejected by name.

The model sections come from the registered families (models/families.py: each family's Config) and
the service's part of `serve` from service/settings.py, so each key is declared once. The values, and
so every default, live in params.yaml alone: the code declares keys, types and bounds.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from models.families import FAMILIES, Family
from service.settings import Limits
from tasks.core.errors import GenloopError
from tasks.core.storage import parse_yaml

PARAMS_FILE = "params.yaml"
BUILTIN_SOURCES = {"sklearn:digits": "image", "pydoc:topics": "text"}
Auto = Literal["auto"]


class Section(BaseModel):
    # strict: "8" is not an int, 1 is not a float-typed string; extra keys are an error.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataParams(Section):
    source: str

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
    workers: int = Field(ge=1, le=64)
    retries: int = Field(ge=1, le=20)
    timeout_s: float = Field(gt=0)


class ImageExpectations(Section):
    # auto: taken from the dataset's reference, recorded from its first batch that passed
    height: Annotated[int, Field(ge=1)] | Auto
    width: Annotated[int, Field(ge=1)] | Auto
    channels: Literal[1, 2, 3, 4, "auto"]  # grey, grey + alpha, RGB, RGBA
    labels: list[int] | list[str] | Auto | None  # None: any label
    min_per_class: int = Field(ge=0)
    max_duplicate_rate: float = Field(ge=0, le=1)


class TextExpectations(Section):
    min_chars: int = Field(ge=1)
    min_charset_coverage: float = Field(ge=0, le=1)
    # auto: the characters of the dataset's first batch that passed | printable-ascii | any
    charset: Literal["auto", "printable-ascii", "any"]
    max_pii_file_rate: float = Field(ge=0, le=1)


class ValidateParams(Section):
    image: ImageExpectations
    text: TextExpectations


class ImageAugment(Section):
    factor: int = Field(ge=0, le=50)
    max_shift: int = Field(ge=0)
    max_rotation_deg: float = Field(ge=0, le=180)
    noise_std: float = Field(ge=0)


class AugmentParams(Section):
    seed: int
    val_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(gt=0, lt=1)
    image: ImageAugment


class TrainParams(Section):
    seed: int
    # the budget, in optimizer steps (rounded up to whole epochs); auto: from the number of training
    # examples (tasks/training/fit.py: budget)
    max_steps: Annotated[int, Field(ge=1)] | Literal["auto"]
    # between validations and checkpoints; None: one pass over the training images, at least 50 steps
    # (so a small folder trains as long as a large one), or 100 for text
    steps_per_epoch: int | None = Field(ge=1)
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
    init_from: str | None  # an exported model folder, or a registered version (genloop-<line>:champion)
    ema_decay: float | None = Field(gt=0, lt=1)  # EMA of the weights per optimizer step; None = off
    use_tuned: bool  # apply the tune stage's best values (artifacts/tune/best_params.yaml)


def _optional(f) -> Any:
    """A field's type with its bounds, or None."""
    return (Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation) | None


# A family's own training settings (model.<family>.train): any keys of train, each optional.
TrainOverrides = create_model(
    "TrainOverrides",
    __base__=Section,
    **{name: (_optional(f), None) for name, f in TrainParams.model_fields.items()},
)


def family_section(family: Family) -> type[Section]:
    """The params model of model.<family>: the family's Config fields, with their bounds, and `train`:
    the family's own training settings, over the train section's (text and images differ)."""
    hints = typing.get_type_hints(family.config)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(family.config):
        bounds = dict(f.metadata)
        choices = bounds.pop("choices", None)
        auto = bounds.pop("auto", False)  # `auto`: the family sizes it from the data
        hint = hints[f.name]
        if typing.get_origin(hint) is list:  # choices and number bounds hold for each item
            item = Literal[choices] if choices else typing.get_args(hint)[0]
            each = {k: bounds.pop(k) for k in ("ge", "gt", "le", "lt") if k in bounds}
            hint = list[Annotated[item, Field(**each)]]
        elif choices:
            hint = Literal[choices]
        if auto:  # the bounds hold for the number (or list) given; `auto` is the other choice
            hint = Annotated[hint, Field(**bounds)] | Literal["auto"]
            bounds = {}
        fields[f.name] = (hint, Field(**bounds))
    fields["train"] = (TrainOverrides | None, None)
    return create_model(f"{family.name.upper()}Params", __base__=Section, **fields)


class _ModelBase(Section):
    family: str
    _auto_family: bool = PrivateAttr(default=False)  # family was `auto` in params.yaml (parse resolved it)
    # the model line, whose champion is served: auto = the source's dataset name and the family
    name: str

    @field_validator("name")
    @classmethod
    def _line_name(cls, v: str) -> str:
        # the registry's names (genloop-<line>) are BentoML tags: 63 characters at most, ending in a
        # letter or digit
        if v != "auto" and not re.fullmatch(r"[a-z0-9]([a-z0-9._-]{0,53}[a-z0-9])?", v):
            raise ValueError(
                "a line name is auto, or lowercase letters, digits, '.', '_' and '-', starting and ending "
                "with a letter or digit (55 at most)"
            )
        return v

    @field_validator("family")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v != "auto" and v not in FAMILIES:
            raise ValueError(f"unknown model family {v!r} (choose from auto, {', '.join(FAMILIES)})")
        return v

    def family_config(self) -> dict:
        section = getattr(self, self.family)
        if section is None:
            raise GenloopError(
                f"params.yaml: model.family is {self.family} but there is no model.{self.family} section"
            )
        return section.model_dump(exclude={"train"})


# family: one of FAMILIES; one optional section per family (only the chosen one must be there)
ModelParams = create_model(
    "ModelParams",
    __base__=_ModelBase,
    **{name: (family_section(f) | None, None) for name, f in FAMILIES.items()},
)


class EvaluateText(Section):
    samples: int = Field(ge=1)  # texts generated per model
    length: int = Field(ge=10)  # characters per text
    ngram: int = Field(ge=1)  # n of the character n-gram distributions compared
    copy_span: int = Field(ge=8)  # a verbatim training span this long counts as a copy
    temperature: float = Field(gt=0)  # of the samples judged (1: the model's own distribution)


class EvaluateBaseline(Section):
    # images: the Gaussian mixtures tried (components x covariance regularisation); the best on the
    # validation split is the baseline
    gmm_components: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    gmm_reg_covar: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)
    ngram_max_order: int = Field(ge=1, le=10)  # text: orders 1 to this tried on the validation split


class Gate(Section):
    max_memorised: float = Field(ge=0, le=1)  # copies beyond the share real unseen data scores
    min_improvement: float = Field(ge=0)  # the headline metric must beat the champion's by this much
    max_regression: float = Field(ge=0)  # relative worsening allowed on every other metric
    max_fd_ratio: float = Field(gt=0)  # images: samples' Fréchet distance at most this x the baseline's
    max_pr_regression: float = Field(ge=0, le=1)  # images: precision, recall at least baseline x (1 - this)


class EvaluateParams(Section):
    seed: int
    importance_samples: int = Field(ge=1)  # VAE likelihood bound (IWAE k)
    knn_k: int = Field(ge=1)  # precision / recall neighbourhoods
    copy_quantile: float = Field(gt=0, lt=1)  # images: what counts as "as close as a copy"
    image_draws: int = Field(ge=1)  # images: sample metrics averaged over this many draws
    text: EvaluateText
    baseline: EvaluateBaseline
    gate: Gate


class SpaceEntry(Section):
    """One dimension of the search space: a float or int range (log scale or a step), or choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: Any = None  # a list (checked with the rest in check_space, for a clearer message)


class TuneParams(Section):
    enabled: bool
    study: str  # auto: the line and a fingerprint of what the trials train on
    storage: str  # journal | an SQLAlchemy URL of PostgreSQL (postgresql+psycopg://...)
    n_trials: int = Field(ge=1)
    workers: int = Field(ge=1, le=64)
    max_steps: int = Field(ge=1)  # each trial's budget in optimizer steps
    heartbeat_s: int = Field(ge=1)  # PostgreSQL: a running trial's heartbeat
    grace_s: int = Field(ge=2)  # PostgreSQL: a trial silent this long belongs to a dead worker
    seed: int
    startup_trials: int = Field(ge=0)
    pruner: Literal["median", "percentile", "hyperband", "none"]
    percentile: float = Field(gt=0, lt=100)  # percentile: the share of trials kept at each epoch
    warmup_epochs: int = Field(ge=0)
    patience: int = Field(ge=0)  # 0: prune as soon as the pruner says so
    space: dict[str, SpaceEntry] = Field(min_length=1)

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        if v != "journal" and not v.startswith(("postgresql://", "postgresql+")):
            raise ValueError("journal (a file, one machine) or a PostgreSQL URL: postgresql+psycopg://...")
        return v

    @model_validator(mode="after")
    def _grace(self) -> TuneParams:
        if self.grace_s <= self.heartbeat_s:
            raise ValueError("tune.grace_s must exceed tune.heartbeat_s (else live trials are failed)")
        return self


class DriftMethod(Section):
    method: str  # an Evidently drift method (wasserstein, psi, jensenshannon, ...; mmd for embeddings)
    threshold: float = Field(gt=0)  # an effect size: drift at or above it


class MonitorMethods(Section):
    numeric: DriftMethod  # per-sample statistics
    categorical: DriftMethod  # distributions: labels, characters, bigrams
    embedding: DriftMethod

    @field_validator("embedding")
    @classmethod
    def _mmd(cls, v: DriftMethod) -> DriftMethod:
        if v.method != "mmd":
            raise ValueError("embeddings are compared by mmd (maximum mean discrepancy)")
        return v


class MonitorRatings(Section):
    low: int = Field(ge=1, le=5)  # a rating at or below it is low
    max_mean_drop: float = Field(gt=0)  # drift: the mean rating fell this much from the previous window
    max_low_share_rise: float = Field(gt=0, le=1)  # drift: the share of low ratings rose this much
    min_ratings: int = Field(ge=1)  # per window, else "not enough data"


class MonitorParams(Section):
    window_hours: float = Field(gt=0)  # the window: the last N hours...
    window_samples: int | None = Field(ge=1)  # ...or, when set, the last N samples
    min_samples: int = Field(ge=1)  # fewer in a window: "not enough data", not a verdict
    max_rows: int = Field(ge=100)  # rows a side of the embedding comparison (MMD is quadratic)
    methods: MonitorMethods
    ratings: MonitorRatings
    logs: list[str]  # serving.db files or glob patterns (replicas); [] = the local deployment's
    embedding_plot: bool  # Evidently's t-SNE of the embeddings in the report (slow)
    keep_reports: int = Field(ge=1)  # run folders whose HTML is kept; older ones keep decision.json


class RetrainParams(Section):
    cooldown_hours: float = Field(ge=0)  # guardrail: no retrain starts within this long of the last one
    max_per_day: int = Field(ge=1)  # guardrail: at most this many retrains in any 24 hours
    min_new_files: int = Field(ge=0)  # guardrail: new source files since the last retrain...
    min_new_ratings: int = Field(ge=1)  # ...or new ratings; the monitor then sends genloop.feedback.ready
    keep_history: int = Field(ge=1)  # lines of artifacts/retrain/history.jsonl kept
    min_rating: int = Field(ge=1, le=5)  # samples rated this or higher are drawn again as training data
    max_synthetic_share: float = Field(ge=0, lt=1)  # of the collected set, at most this is model-made


class ClusterParams(Section):
    """What `genloop package --cluster` writes into the Kubernetes manifests."""

    image: str = Field(min_length=1)  # the image's repository; its tag is the Bento's version
    replicas: int = Field(ge=1, le=1000)
    cpu: str = Field(pattern=r"^[0-9]+(\.[0-9]+)?m?$")  # requested per replica: 1, 500m
    memory: str = Field(pattern=r"^[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?$")  # requested and the limit: 2Gi


class PackageParams(Section):
    gpu: bool  # the service asks for one GPU (and uses it when present)
    cluster: ClusterParams


class ServeParams(Section, Limits):
    """The service's limits (service/settings.py) and where `genloop deploy` runs it."""

    host: str
    port: int = Field(ge=1, le=65535)
    ready_timeout_s: float = Field(gt=0)  # deploy waits this long for /readyz

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CoresParams(Section):
    """The plan for this machine's cores (models/cores.py reads it, with the environment first)."""

    total: Annotated[int, Field(ge=1)] | Auto  # cores to share; auto: those this process may use
    threads: Annotated[int, Field(ge=1)] | Auto  # per process; auto: an equal share of total


class SiteParams(Section):
    """Where a team's shared state lives (tasks/core/site.py); empty: this machine only."""

    remote: str | None = None  # s3://bucket/prefix: the DVC remote and the registry's
    database: str | None = None  # postgresql://user@host:port/db: the champion record, the service's log

    @field_validator("remote")
    @classmethod
    def _remote(cls, v: str | None) -> str | None:
        if v and (not v.startswith("s3://") or not v[5:].split("/")[0]):
            raise ValueError("an S3 location with a bucket: s3://bucket/prefix (empty: this machine only)")
        return v or None

    @field_validator("database")
    @classmethod
    def _database(cls, v: str | None) -> str | None:
        if not v:
            return None
        if not v.startswith(("postgresql://", "postgresql+psycopg://")):
            raise ValueError("a PostgreSQL URL: postgresql://user@host:port/db (empty: this machine only)")
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(v)
        if parts.password is not None or {"password", "sslpassword"} & set(parse_qs(parts.query)):
            raise ValueError("no password in the URL: set PGPASSWORD (or ~/.pgpass) instead")
        return v


class Params(Section):
    data: DataParams
    collect: CollectParams
    validate_: ValidateParams = Field(alias="validate")
    augment: AugmentParams
    # the sections of the later stages may be left out where only the data stages run
    model: ModelParams | None = None
    train: TrainParams | None = None
    tune: TuneParams | None = None
    evaluate: EvaluateParams | None = None
    package: PackageParams | None = None
    serve: ServeParams | None = None
    monitor: MonitorParams | None = None
    retrain: RetrainParams | None = None
    cores: CoresParams | None = None
    site: SiteParams | None = None

    def require(self, section: str):
        value = getattr(self, section)
        if value is None:
            raise GenloopError(f"params.yaml has no {section} section")
        return value

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


def line(params: Params) -> str:
    """The model line these params train and serve: model.name, or with `auto` the source's dataset
    name and the family (sklearn-digits-vae)."""
    from tasks.core.datasets import line_of

    model = params.require("model")
    return line_of(params.data.source, model.family, model.name)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The params model of the section at `loc` (('train',), ('model', 'gpt'), ...)."""
    model: Any = Params
    for part in loc:
        fields = model.model_fields
        name = "validate_" if model is Params and part == "validate" else part
        if name not in fields:
            return None
        annotation = fields[name].annotation
        candidates = [a for a in typing.get_args(annotation) or (annotation,) if isinstance(a, type)]
        model = next((a for a in candidates if issubclass(a, BaseModel)), None)
        if model is None:
            return None
    return model


def _describe(err: ValidationError, prefix: tuple[str, ...] = ()) -> str:
    """One line per mistake: a misspelt key is named with the key it probably meant, and the 'missing'
    error of that meant key is not repeated (nor the whole section dumped). `prefix`: where the model
    validated sits in params.yaml. A store's URL is shown without its password."""
    errors = [{**e, "loc": (*prefix, *e["loc"])} for e in _without_auto_branch(err.errors())]
    for e in errors:
        if e["loc"][:1] == ("site",) and isinstance(e.get("input"), str):
            from tasks.core.site import redact

            e["input"] = redact(e["input"])
    meant: set[tuple] = set()
    lines = []
    for e in errors:
        if e["type"] != "extra_forbidden":
            continue
        *section, key = (str(p) for p in e["loc"])
        model = _model_at(tuple(section))
        valid = [k if k != "validate_" else "validate" for k in (model.model_fields if model else [])]
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else f" (valid: {', '.join(valid)})" if valid else ""
        lines.append(f"  {'.'.join([*section, key])}: unknown key{hint}")
        if close:
            meant.add((*section, close[0]))
    for e in errors:
        loc = tuple(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden" or loc in meant:
            continue
        if e["type"] == "missing":
            lines.append(f"  {'.'.join(loc)}: missing")
        elif e["type"] in ("model_type", "dict_type"):
            lines.append(f"  {'.'.join(loc)}: must be a section of keys (got {e.get('input')!r})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  {'.'.join(loc)}: {msg} (got {e.get('input')!r})")
    return "\n".join(dict.fromkeys(lines))


def _without_auto_branch(errors: list) -> list:
    """A value that may also be `auto` fails two ways (the number or list, and the word): one line,
    the first, at the key's own place, saying that auto is the other choice."""
    kept = []
    for e in errors:
        loc = list(e["loc"])
        if "literal['auto']" in loc:
            continue
        tags = [i for i, part in enumerate(loc) if part in _TAGS or str(part).startswith(_TAGS_LIKE)]
        if tags:
            del loc[tags[0]]
            e = {**e, "loc": tuple(loc), "msg": e["msg"] + ", or auto"}
        kept.append(e)
    return kept


# pydantic's names of a union's branches, in an error's location
_TAGS, _TAGS_LIKE = ("int", "float", "str", "bool"), ("constrained-", "list[")


def parse(raw: dict, origin: str = PARAMS_FILE) -> Params:
    """Validate a parsed params mapping; every offending key is named in the error. The chosen family's
    own training settings (model.<family>.train) are applied over the train section here, so every
    reader of params.train sees what that family trains with."""
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise GenloopError(f"invalid parameters in {origin}:\n{_describe(err)}") from None
    if params.model is not None and params.model.family == "auto":
        chosen = params.model.model_copy(update={"family": auto_family(params)})
        chosen._auto_family = True
        params = params.model_copy(update={"model": chosen})
    try:
        params = _family_train(params)
    except ValidationError as err:
        family = params.model.family if params.model else "?"
        raise GenloopError(
            f"invalid parameters in {origin} (model.{family}.train over train):\n{_describe(err)}"
        ) from None
    if params.tune is not None:
        from tasks.core.space import check_space

        mistakes = check_space(params.tune.space)
        if mistakes:
            raise GenloopError(f"invalid parameters in {origin}:\n" + "\n".join(f"  {m}" for m in mistakes))
    return params


def auto_family(params: Params) -> str:
    """What `model.family: auto` trains on data.source (models/families.py, auto_family): the family of
    its kind of data and, for images, of their size. Both are read from the source's files, or from the
    data already collected; a source that cannot be read yet counts as images larger than 8x8, and
    collect then says what is wrong with it."""
    from models.families import auto_family as family_for
    from tasks.core.datasets import describe_source

    kind, size = describe_source(params.data.source)
    return family_for(kind or "image", size)


def family_was_auto(model: ModelParams) -> bool:
    """Whether params.yaml left the family to `auto` (then `model.family` is what auto chose)."""
    _ = model.family  # what this depends on: a traced run records the read of model.family
    target = getattr(model, "_target", model)  # under the tracer of params read, the params themselves
    return bool(target._auto_family)


def _family_train(params: Params) -> Params:
    """params with model.<family>.train applied over train (the section stays, for `family_train`)."""
    over = family_train(params)
    if not over or params.train is None:
        return params
    values = params.train.model_dump() | over
    return params.model_copy(update={"train": TrainParams.model_validate(values)})


def family_train(params: Params) -> dict[str, Any]:
    """The chosen family's own training settings (model.<family>.train), as set in params.yaml."""
    model = params.model
    section = getattr(model, model.family, None) if model is not None else None
    over = section.train if section is not None else None
    return over.model_dump(exclude_none=True) if over is not None else {}


def with_values(params: Params, values: dict[str, Any], origin: str = "the values given") -> Params:
    """`params` with dotted keys replaced (`train.lr: 0.003`, `model.vae.latent_dim: 16`), validated again
    as params.yaml is. A train key the chosen family sets itself (model.<family>.train) is replaced
    there too: the value given is the one trained with."""
    raw = params.model_dump(by_alias=True)
    if params.model is not None and family_was_auto(params.model):
        raw["model"]["family"] = "auto"  # chosen again: another data.source may hold another kind
    own = family_train(params)
    for key, value in values.items():
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise GenloopError(f"{origin}: {key} is not a parameter")
        node[last] = value
        if path == ["train"] and last in own:
            raw["model"][params.model.family]["train"][last] = value
    return parse(raw, origin)


def load(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate `params.yaml` (float fields accept integers; nothing else is coerced)."""
    path = Path(path)
    if not path.is_file():
        raise GenloopError(f"{path} not found: run genloop from the project folder (where params.yaml is)")
    try:
        raw = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise GenloopError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise GenloopError(f"{path} must be a mapping of sections")
    return parse(raw, str(path))


class Recording:
    """A read-only view of params that notes every key read through it (`dotted.key`; a whole section
    when it is dumped). `genloop stage` uses it when GENLOOP_PARAMS_LOG names a file, so a test can check
    each stage's `params:` list in dvc.yaml against what the stage really read."""

    def __init__(self, target: BaseModel, seen: set[str] | None = None, prefix: str = "") -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_seen", set() if seen is None else seen)
        object.__setattr__(self, "_prefix", prefix)

    def _key(self, name: str) -> str:
        name = "validate" if name == "validate_" else name
        return f"{self._prefix}.{name}" if self._prefix else name

    def _wrap(self, key: str, value: Any) -> Any:
        if isinstance(value, BaseModel):
            return Recording(value, self._seen, key)
        self._seen.add(key)
        return value

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("model_") or callable(value):
            return value if name not in ("model_dump", "family_config") else self._dumping(name, value)
        return self._wrap(self._key(name), value)

    def _dumping(self, name: str, method):
        def read_all(*args, **kwargs):
            key = self._prefix or "*"
            if name == "family_config":
                key = f"{self._prefix}.{self._target.family}"
            self._seen.add(key)
            return method(*args, **kwargs)

        return read_all

    def require(self, section: str) -> Any:
        return self._wrap(self._key(section), self._target.require(section))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("params are read-only")

    def read(self) -> list[str]:
        return sorted(self._seen)
