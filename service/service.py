"""The genloop service (BentoML 1.4): one service that checks requests and runs the model in-process.

`Genloop` is the public API: `POST /generate`, `POST /feedback`, `GET /version`, the web page at
`/ui`, and BentoML's own `/livez`, `/readyz`, `/metrics` and API docs at `/`. It validates requests
against bodies shaped by the served model (service/requests.py: 400 with the reason), runs the
registered model (a `BentoModel`, loaded from safetensors; one GPU when packaged with `gpu`) with
adaptive batching of concurrent requests (service/batcher.py: `max_batch_size`, `max_latency_ms`),
logs every sample (seed, condition, features: models/features.py) and stores feedback durably
(service/store.py), and sits behind service/guard.py (API key, JSON only, body size, concurrency,
timeout, one error shape).

The model runs in the API's process, not in a second BentoML service behind it: at one sample per
request the hop between two services cost more than the digits model (bench/serve.py measures it).

Serve from source with `genloop serve` (it passes every setting of params.yaml's `serve` section as a
`--arg`), or build a Bento with `genloop stage package` and run `genloop deploy`.
"""

from __future__ import annotations

import gc
import secrets
import time
import uuid
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound
from pydantic import BaseModel

from service.batcher import Batcher
from service.guard import Guard, quiet_client_errors
from service.pictures import png
from service.requests import FeedbackRequest, generate_request, generate_response
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
GenerateResponse = generate_response(KIND)
Sample = GenerateResponse.model_fields["samples"].annotation.__args__[0]


class Model:
    """The registered model, loaded once, and what the service computes with it: samples and their
    features. Its calls take and return plain values, a batch of jobs at a time."""

    def __init__(self, path: str) -> None:
        import torch

        from models import export

        self.device = "cuda" if torch.cuda.is_available() and SETTINGS.gpu else "cpu"
        expected = bentoml.models.get(SETTINGS.model).info.metadata.get("weights_sha256")
        self.model = export.load(path, self.device, sha256=expected).to(self.device)
        self.featurizer = None
        if KIND == "image":  # the drift monitor's eye, kept with the version (tasks/monitoring/reference.py)
            from models.features import FEATURIZER_INFO, ImageFeaturizer

            folder = Path(path) / "reference"
            exists = (folder / FEATURIZER_INFO).is_file()
            self.featurizer = ImageFeaturizer.load(folder) if exists else ImageFeaturizer(None)

    def __call__(self, jobs: list[dict]) -> list[dict]:
        """Each job's samples as shown (base64 PNGs or texts) and as written (what the drift monitor's
        features are computed from, later and off the request path: `featurize`)."""
        import torch

        from models import cores

        cores.follow()  # in the thread that computes: torch's threads are set per thread
        with torch.inference_mode():
            results = self.model.sample_batch(jobs)
        out = []
        for job, samples in zip(jobs, results, strict=True):
            if KIND == "image":
                written = list(samples.cpu().numpy())
                out.append({"samples": [png(img) for img in written], "written": written})
            else:  # what the model wrote: the prompt is the request's, judged by the request check
                k = len(job.get("condition") or "")
                out.append({"samples": samples, "written": [t[k:] for t in samples]})
        return out

    def featurize(self, written: list):
        """(stats, embedding) of samples as written, many requests' at once (models/features.py)."""
        import numpy as np

        from models import cores
        from models.features import features

        # the log writer's thread, beside the model's: one thread, or the two would stall each other
        cores.follow(limit=1)
        return features(KIND, np.stack(written) if KIND == "image" else written, self.featurizer)


def job_size(job: dict) -> float:
    """A job's work, for the batcher's choice to run a lone one inline: samples, times the characters
    a text model writes for each."""
    return job["n"] * job.get("length", 1)


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


@bentoml.service(
    resources={"gpu": 1} if SETTINGS.gpu else {"cpu": "1"},
    workers=1,
    traffic={"timeout": SETTINGS.timeout_s + 5},
)
@bentoml.asgi_app(_page_app(), path="/")
class Genloop:
    model_ref = bentoml.models.BentoModel(SETTINGS.model)

    def __init__(self) -> None:
        from models import cores
        from service.store import open_store

        # the service's share of the machine's cores, beside training and the monitor (models/cores.py)
        cores.claim("serve")
        self.model = Model(self.model_ref.path)
        self.batcher = Batcher(
            self.model, SETTINGS.max_batch_size, SETTINGS.max_latency_ms / 1000, size=job_size
        )
        self.store = open_store(featurize=self.model.featurize)  # serving.db, or site.database
        self.info = model_info()
        # What the imports and the model made lives as long as the service: out of the collector's
        # sight, a full collection walks only what requests make. Before, one paused every request for
        # 60-130 ms every few seconds (the p99 of 50 requests/s on an idle machine: 52 ms).
        gc.collect()
        gc.freeze()

    @bentoml.on_shutdown
    def _close(self) -> None:
        """After the last request has been answered: the log still queued goes to disk."""
        self.batcher.close()
        self.store.close()

    def _job(self, req, seed: int) -> dict:
        """The model's arguments for a request its body model has already checked."""
        job: dict = {"n": req.n, "seed": seed}
        if KIND == "image":
            if req.label is not None:
                job["condition"] = CLASSES.index(req.label)
            return job
        return job | {"condition": req.prompt, "temperature": req.temperature, "length": req.length}

    async def _sample(self, job: dict) -> dict:
        """With batching, the job joins the next batch; without, it runs at once in a thread of its own
        (as a plain BentoML service runs a synchronous API)."""
        if SETTINGS.batching:
            return await self.batcher.submit(job)
        import anyio

        return (await anyio.to_thread.run_sync(self.model, [job]))[0]

    @bentoml.api(route="/generate", input_spec=GenerateRequest, output_spec=GenerateResponse)
    async def generate(self, **fields) -> BaseModel:
        """Draw `n` samples: images (base64 PNG) for a `label`, or texts continuing a `prompt`."""
        req = GenerateRequest.model_construct(**fields)  # BentoML has validated the fields
        # a request without a seed gets one drawn here and logged: every sample can be made again
        seed = req.seed if req.seed is not None else secrets.randbelow(2**62)
        job = self._job(req, seed)
        start = time.perf_counter()
        result = await self._sample(job)
        latency = (time.perf_counter() - start) * 1000
        request_id = uuid.uuid4().hex
        ids = [f"{request_id}-{i}" for i in range(len(result["samples"]))]  # see Store.known_sample
        rows = [{"id": i, "written": w} for i, w in zip(ids, result["written"], strict=True)]
        if KIND == "image":  # the class drawn: the one asked for, or the classes in turn (models/common.py)
            for i, row in enumerate(rows):
                row["asked"] = req.label is not None  # the request check counts only these
                row["label"] = (
                    req.label if req.label is not None else (CLASSES[i % len(CLASSES)] if CLASSES else None)
                )
        elif req.prompt:  # its features are computed with the samples'
            for row in rows:
                row |= {"asked": True, "prompt_text": req.prompt}
                row["prompt"] = req.prompt if SETTINGS.log_prompts else None
        self.store.log_request(
            request_id, self.info["model"], req.model_dump() | {"seed": seed}, latency, rows
        )
        key = "image" if KIND == "image" else "text"
        # built from values of known types, so not validated again
        shown = zip(ids, result["samples"], strict=True)
        samples = [Sample.model_construct(id=i, **{key: s}) for i, s in shown]
        return GenerateResponse.model_construct(
            model=self.info["model"], request_id=request_id, seed=seed, samples=samples
        )

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
