"""package: build a Bento (BentoML's deployable unit) from the champion model version.

The Bento holds the service code (service/), the model code (models/), the champion's registry entry
(weights, card, lineage), pinned dependencies and the `serve` settings as Bento arguments; its labels
carry the model's lineage. Its version is the model's version plus a hash of the settings and of the
code it carries, so the same champion, settings and code give the same Bento and a rebuild is skipped
(and after an upgrade of the code, the next package builds a new one). Writes
artifacts/package/bento.json.
"""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Limits
from tasks.core import paths
from tasks.core.errors import GenloopError
from tasks.core.orchestration import publish_table, repro, task
from tasks.core.params import Params, line
from tasks.core.storage import content_hash, read_json, sha256_file, write_json
from tasks.registry import bentos, champions, shared, store

OUT = paths.ARTIFACTS / "package" / "bento.json"
INCLUDE = ("service/*.py", "service/ui/*", "models/*.py")  # the code a Bento carries
# models/ and service/ (psycopg: the log in site.database, shared by every replica)
SERVE_DEPS = ("bentoml", "torch", "numpy", "safetensors", "pillow", "pydantic", "psycopg", "psycopg-binary")


def pins_in(text: str) -> dict[str, str]:
    """The `name==version` lines of a requirements file, by normalised name."""
    found = {}
    for entry in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", entry)
        if m:
            found[normalised(m.group(1))] = m.group(2)
    return found


def locked(lock: Path = Path("requirements.lock")) -> dict[str, str]:
    """requirements.lock's pins, by normalised name."""
    return pins_in(lock.read_text()) if lock.is_file() else {}


def normalised(name: str) -> str:
    """A package's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(lock: Path = Path("requirements.lock")) -> list[str]:
    """The serving dependencies and every package they pull in, at the versions requirements.lock pins
    (what the tests ran), so that BentoML's lock of the Bento resolves to the same versions; a package
    the lock does not hold (CUDA's, where torch is a CPU build) is left to that resolver."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    pins = locked(lock)
    seen: set[str] = set()
    todo = [normalised(n) for n in SERVE_DEPS]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for req in map(Requirement, requires):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(normalised(req.name))
    top = {normalised(n) for n in SERVE_DEPS}
    return sorted(f"{n}=={pins[n]}" if n in pins else n for n in seen if n in pins or n in top)


def code(root: Path = Path(".")) -> dict[str, str]:
    """sha256 of each file a Bento carries."""
    files = sorted({p for pattern in INCLUDE for p in root.glob(pattern) if p.is_file()})
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def settings(params: Params, model: str) -> dict:
    """The Bento's arguments (service/settings.py): what the service does, not where deploy runs it."""
    serve = params.require("serve")
    limits = {key: getattr(serve, key) for key in Limits.model_fields}  # not host or port: where it runs
    return {"model": model, "gpu": params.require("package").gpu, **limits}


def build(params: Params, model: str | None = None, record: bool = True) -> dict:
    """Build (or find) the Bento for `model` (default: the champion of the params' model line); `record`
    writes artifacts/package/bento.json (the DVC stage's output)."""
    name = store.name_of(line(params))
    model = model or champions.champion(name)
    if model is None:
        raise GenloopError(f"{name} has no champion yet: run evaluate (dvc repro evaluate) first")
    store.verify(model)  # never package damaged weights
    args = settings(params, model)
    packages = pinned()
    # the code and the pins are part of the version: after an upgrade, the next package builds anew
    version = (
        f"{model.split(':')[1]}-{content_hash({'settings': args, 'code': code(), 'packages': packages})[:8]}"
    )
    tag = f"genloop:{version}"
    bentoml = store.bentoml()
    try:
        bentos.get(tag)  # built here, or by another machine and shared (an unreachable remote: its error)
        found = True
    except bentoml.exceptions.NotFound:
        found = False
    if found:
        try:
            bentos.verify(tag)
        except GenloopError:
            bentoml.bentos.delete(tag)  # incomplete: build it again
            found = False
    if not found:
        info = store.info(model)
        lineage = info["metadata"].get("lineage", {})
        labels = {
            "model": model,
            "source": str(lineage.get("source")),
            "git": str((lineage.get("git") or {}).get("commit"))[:12],
            "data": str((lineage.get("dvc") or {}).get("data/processed", ""))[:12],
        }
        with bentos.staged(tag) as bento_store:
            bentoml.bentos.build(
                "service.service:Genloop",
                name="genloop",
                version=version,
                labels=labels,
                description="genloop: generate samples from the champion model, rate them",
                include=list(INCLUDE),
                python={"packages": packages},
                models=[model],
                args=args,
                build_ctx=".",
                _bento_store=bento_store,
            )
    shared.share("bentos", tag)  # with site.remote: every machine can deploy it (once exported, a no-op)
    result = {"bento": tag, "model": model, "settings": args}
    if record:
        write_json(OUT, result)
    return result


def run(params: Params) -> dict:
    """The champion's Bento; with no champion yet (the gate rejected every model so far) the stage
    records that there is nothing to package instead of failing the pipeline."""
    name = store.name_of(line(params))
    if champions.champion(name) is None:
        result = {"bento": None, "model": None, "reason": f"{name} has no champion yet (see decision.json)"}
        write_json(OUT, result)
        return result
    return build(params)


@task(name="package")
def package_task() -> dict:
    """Run the DVC stage `package` and show the Bento in the Prefect UI."""
    repro("package")
    result = read_json(OUT)
    publish_table("package", [{"bento": str(result["bento"]), "model": str(result["model"])}], "Built Bento")
    return result
