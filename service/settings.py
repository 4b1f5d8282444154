"""The service's settings: Bento arguments, written by the package stage from params.yaml (`serve`),
so a built Bento carries them; `bentoml serve --arg key=value` overrides one for a run."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Settings(BaseModel):
    model: str = Field("genloop-vae:latest", description="registered model version to serve")
    gpu: bool = False  # declare one GPU in the model service's resources
    batching: bool = True  # adaptive batching of model calls across requests
    max_batch_size: int = Field(64, ge=1)  # requests per model call
    max_latency_ms: int = Field(10000, ge=1)  # the batcher's latency bound
    max_samples: int = Field(16, ge=1)  # n per request
    max_length: int = Field(1000, ge=1)  # characters per text sample
    max_prompt: int = Field(256, ge=0)  # characters of prompt
    max_concurrency: int = Field(32, ge=1)  # requests in flight before 429
    timeout_s: float = Field(30.0, gt=0)  # a request running longer gets 504
    max_body_bytes: int = Field(65536, ge=256)  # larger request bodies get 413
    docs: bool = True  # BentoML's API docs page at / (it loads a third-party script into the browser)
