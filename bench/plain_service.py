"""The reference for bench/serve.py: the same model in a plain BentoML service with library defaults
(no batching, no guard, no logging), answering the same requests with the same payloads."""

from __future__ import annotations

import bentoml

ARGS = bentoml.use_arguments()


@bentoml.service
class Plain:
    ref = bentoml.models.BentoModel(ARGS.model)

    def __init__(self) -> None:
        from models import export

        self.model = export.load(self.ref.path)

    @bentoml.api
    def generate(self, n: int = 1, seed: int | None = None, label: str | None = None,
                 prompt: str | None = None, length: int = 64) -> dict:  # fmt: skip
        from service.pictures import png

        if self.model.data["kind"] == "text":
            texts = self.model.sample(n, condition=prompt, seed=seed, length=length)
            return {"samples": [{"text": t} for t in texts]}
        condition = self.model.data["classes"].index(label) if label is not None else None
        images = self.model.sample(n, condition=condition, seed=seed).numpy()
        return {"samples": [{"image": png(img)} for img in images]}
