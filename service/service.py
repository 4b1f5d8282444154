"""The genloop service (BentoML 1.4): a model service that batches, behind an API service that checks.

- `Generator` holds the registered model (a `BentoModel`, loaded from safetensors) and answers
  `generate_batch`, a batchable method: BentoML's adaptive batching merges concurrent requests into
  one model call (`max_batch_size`, `max_latency_ms`). It asks for a GPU when packaged with `gpu`.
- `Genloop` is the public API: `POST /generate`, `POST /feedback`, `GET /version`, the web page at
  `/ui`, and BentoML's own `/livez`, `/readyz`, `/metrics` and API docs at `/`. It validates requests
  against bodies shaped by the served model (service/requests.py: 400 with the reason), logs every
  sample (seed, condition, features: models/features.py) and stores feedback durably
  (service/store.py), and sits behind service/guard.py (API key,
  JSON only, body size, concurrency, timeout, one error shape).

Serve from source with `genloop serve` (it passes every setting of params.yaml's `serve` section as a
`--arg`), or build a Bento with `genloop stage package` and run `genloop deploy`.
"""

from __future__ import annotations

import secrets
import time
import uuid
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound, ServiceUnavailable

from service.guard import Guard, quiet_client_errors
from service.pictures import png
from service.requests import FeedbackRequest, generate_request
from service.settings import Settings

SETTINGS = bentoml.use_arguments(Settings)
quiet_client_errors()
UI = Path(__file__).parent / "ui"


def _described() -> dict:
    """The served version's description (family, config, data): the request body depends on it."""
    from models import export

    return export.describe(bentoml.models.get(SETTINGS.model).path)


DESCRIBED = _described()
KIND = DESCRIBED["data"]["kind"]
CLASSES = [str(c) for c in DESCRIBED["data"].get("classes") or []]
GenerateRequest = generate_request(SETTINGS, KIND, CLASSES, list(DESCRIBED["data"].get("vocab") or []))


# BentoML's client for the model service replaces its aiohttp session every 100 calls (and 300 s) and
# closes the old one with other calls still in flight. Closing drops the payload of a call whose answer
# headers had arrived: it waited for a body that never came until its 504, or failed with "Connection
# closed." (a 500). Measured at concurrency 16: 1 in 16-48 thousand calls; 4 in 4,000 with
# max_requests 2. Over a local socket the refresh buys nothing, so it is switched off.
KEEP_SESSION = {"max_requests": 1_000_000_000_000, "max_age": 1e12}  # never, in practice


@bentoml.service(
    resources={"gpu": 1} if SETTINGS.gpu else {"cpu": "1"},
    workers=1,
    traffic={"timeout": SETTINGS.timeout_s},
    runner_connection=KEEP_SESSION,
)
class Generator:
    """The model. Its methods take and return plain JSON-able values."""

    model_ref = bentoml.models.BentoModel(SETTINGS.model)

    def __init__(self) -> None:
        import torch

        from models import export

        self.device = "cuda" if torch.cuda.is_available() and SETTINGS.gpu else "cpu"
        expected = bentoml.models.get(SETTINGS.model).info.metadata.get("weights_sha256")
        self.model = export.load(self.model_ref.path, self.device, sha256=expected).to(self.device)
        self.kind = KIND
        self.featurizer = None
        if KIND == "image":  # the drift monitor's eye, kept with the version (tasks/monitoring/reference.py)
            from models.features import FEATURIZER_INFO, ImageFeaturizer

            folder = Path(self.model_ref.path) / "reference"
            exists = (folder / FEATURIZER_INFO).is_file()
            self.featurizer = ImageFeaturizer.load(folder) if exists else ImageFeaturizer(None)

    def _run(self, jobs: list[dict]) -> list[dict]:
        import torch

        with torch.inference_mode():
            results = self.model.sample_batch(jobs)
        from models.features import features

        out = []
        for job, samples in zip(jobs, results, strict=True):
            if self.kind == "image":
                samples = samples.cpu().numpy()
                written = samples
            else:  # what the model wrote: the prompt is the request's, judged by the request check
                written = [t[len(job.get("condition") or "") :] for t in samples]
            stats, embedding = features(self.kind, written, self.featurizer)
            shown = [png(img) for img in samples] if self.kind == "image" else samples
            out.append({"samples": shown, "stats": stats.tolist(), "embedding": embedding.tolist()})
        return out

    @bentoml.api(
        batchable=True, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms
    )
    def generate_batch(self, jobs: list[dict]) -> list[dict]:
        return self._run(jobs)

    @bentoml.api
    def generate_one(self, job: dict) -> dict:
        return self._run([job])[0]


def _page_app():
    """The web page (/ui) and GET /version, mounted beside BentoML's routes (not over them)."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    async def page(request):
        return FileResponse(UI / "index.html", headers={"cache-control": "no-cache"})

    async def version(request):
        return JSONResponse(model_info())

    return Starlette(
        routes=[
            Route("/ui", page),
            Route("/ui/", page),
            Mount("/ui/static", StaticFiles(directory=UI)),
            Route("/version", version),
        ]
    )


def model_info() -> dict:
    """The served version and its lineage, from the registry entry packaged into the Bento."""
    model = bentoml.models.get(SETTINGS.model)
    meta = model.info.metadata
    data = meta.get("lineage", {})
    return {
        "model": str(model.tag),
        "family": DESCRIBED["family"],
        "kind": KIND,
        "classes": DESCRIBED["data"].get("classes"),
        "vocab": DESCRIBED["data"].get("vocab"),
        "lineage": {k: data.get(k) for k in ("git", "dvc", "source", "manifest_sha256", "validation")},
        "metrics": meta.get("metrics"),
        "batching": SETTINGS.batching,
        "limits": {
            "max_samples": SETTINGS.max_samples,
            "max_length": SETTINGS.max_length,
            "max_prompt": SETTINGS.max_prompt,
        },
    }


@bentoml.service(traffic={"timeout": SETTINGS.timeout_s + 5})
@bentoml.asgi_app(_page_app(), path="/")
class Genloop:
    generator = bentoml.depends(Generator)

    def __init__(self) -> None:
        from service.store import Store

        self.store = Store()
        self.info = model_info()

    def _job(self, req, seed: int) -> dict:
        """The model's arguments for a request its body model has already checked."""
        job: dict = {"n": req.n, "seed": seed}
        if KIND == "image":
            if req.label is not None:
                job["condition"] = CLASSES.index(req.label)
            return job
        return job | {"condition": req.prompt, "temperature": req.temperature, "length": req.length}

    async def _sample(self, job: dict, attempts: int = 3) -> dict:
        """One call to the model service. A kept-alive connection it has just closed is retried (the
        call has no side effects); a model service that stays unreachable is a 503, not a 500.

        With batching, an answer takes at most max_latency_ms (BentoML's batcher answers 503 beyond
        it), so a batched call not answered within max_latency_ms + 2 s is lost and asked again: a
        guard against answers lost as they were before KEEP_SESSION."""
        import asyncio

        import aiohttp

        lost_after = SETTINGS.max_latency_ms / 1000 + 2
        for attempt in range(attempts):
            try:
                if SETTINGS.batching:
                    call = self.generator.to_async.generate_batch([job])
                    return (await asyncio.wait_for(call, lost_after))[0]
                return await self.generator.to_async.generate_one(job)
            except (aiohttp.ClientConnectionError, TimeoutError) as err:
                if attempt == attempts - 1:
                    raise ServiceUnavailable(f"the model service did not answer: {err!r}") from None
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    @bentoml.api(route="/generate", input_spec=GenerateRequest)
    async def generate(self, **fields) -> dict:
        """Draw `n` samples: images (base64 PNG) for a `label`, or texts continuing a `prompt`."""
        req = GenerateRequest(**fields)
        # a request without a seed gets one drawn here and logged: every sample can be made again
        seed = req.seed if req.seed is not None else secrets.randbelow(2**62)
        job = self._job(req, seed)
        start = time.perf_counter()
        result = await self._sample(job)
        latency = (time.perf_counter() - start) * 1000
        request_id = uuid.uuid4().hex
        ids = [f"{request_id}-{i}" for i in range(len(result["samples"]))]  # see Store.known_sample
        rows = [
            {"id": i, "stats": st, "embedding": emb}
            for i, st, emb in zip(ids, result["stats"], result["embedding"], strict=True)
        ]
        if KIND == "image":  # the class drawn: the one asked for, or the classes in turn (models/common.py)
            for i, row in enumerate(rows):
                row["asked"] = req.label is not None  # the request check counts only these
                row["label"] = (
                    req.label if req.label is not None else (CLASSES[i % len(CLASSES)] if CLASSES else None)
                )
        elif req.prompt:
            from models.features import text_features

            stats, embedding = text_features([req.prompt])
            for row in rows:
                row |= {"asked": True, "prompt_stats": stats[0].tolist(), "prompt_embedding": embedding[0]}
                row["prompt"] = req.prompt if SETTINGS.log_prompts else None
        self.store.log_request(
            request_id, self.info["model"], req.model_dump() | {"seed": seed}, latency, rows
        )
        key = "image" if KIND == "image" else "text"
        return {
            "model": self.info["model"],
            "request_id": request_id,
            "seed": seed,
            "samples": [{"id": i, key: s} for i, s in zip(ids, result["samples"], strict=True)],
        }

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest)
    def feedback(self, sample_id: str, rating: int, comment: str = "") -> dict:
        """Rate a sample this service produced; stored durably before the answer."""
        if not self.store.known_sample(sample_id):
            raise NotFound(f"unknown sample id {sample_id!r}: rate samples this service returned")
        self.store.add_feedback(sample_id, rating, comment, self.info["model"])
        return {"stored": True, "sample_id": sample_id}


Genloop.add_asgi_middleware(
    Guard,
    max_body_bytes=SETTINGS.max_body_bytes,
    max_concurrency=SETTINGS.max_concurrency,
    timeout_s=SETTINGS.timeout_s,
    docs=SETTINGS.docs,
)
