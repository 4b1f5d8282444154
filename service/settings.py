"""The service's settings, defined once: the `serve` section of params.yaml is these fields plus where
`genloop deploy` runs the service (tasks/core/params.py: ServeParams), and a Bento carries their
values as its arguments (written by the package stage; `bentoml serve --arg key=value` overrides one).
No defaults here: the values live in params.yaml.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Limits(BaseModel):
    """What the service does with requests."""

    batching: bool  # adaptive batching of model calls across concurrent requests
    max_batch_size: int = Field(ge=1)  # requests merged into one model call
    max_latency_ms: int = Field(ge=1)  # a request waiting longer for the model gets 503
    max_samples: int = Field(ge=1, le=1024)  # n per request
    max_length: int = Field(ge=1, le=100_000)  # characters per text sample
    max_prompt: int = Field(ge=0, le=100_000)  # characters of prompt
    max_concurrency: int = Field(ge=1)  # requests in flight; more get 429
    timeout_s: float = Field(gt=0)  # a request running longer gets 504
    max_body_bytes: int = Field(ge=256)  # larger request bodies get 413
    docs: bool  # BentoML's API docs page at / (it loads a third-party script into the browser)
    log_prompts: bool  # keep each prompt's text in serving.db (its features are always kept)


class Settings(Limits):
    """The Bento's arguments: the limits, the model version and whether the model asks for a GPU."""

    model: str = Field(description="registered version to serve, e.g. genloop-sklearn-digits-vae:<version>")
    gpu: bool  # the service declares one GPU (package.gpu)
