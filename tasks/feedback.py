"""feedback: the samples people rated highly, drawn again from what the service logged, as a dataset.

A DVC stage the flows run again whenever the ratings changed since its last run: they live in the
service's serving.db, which DVC does not track, so the stage records a fingerprint of those it read in
artifacts/feedback/low_rated.json and the flow compares (by hand: `dvc repro --force feedback`). What it
writes changes only when they do, so collect, which merges data/feedback into data/raw within
retrain.max_synthetic_share (tasks/ingest/feedback.py), reruns only then. For each sample of this model
line whose last rating is retrain.min_rating or higher, the version that drew it draws it again from the
logged seed, position and condition: a model draws the same samples from the same seed, whatever else
shared its batch (models/common.py: sample_batch). Files: data/feedback/files/<label>/feedback-<sample
id>.png (or files/feedback-<sample id>.txt), listed with rating and model in
data/feedback/manifest.json; a file made before is kept, not drawn again. Samples rated lower are never
written: they go to artifacts/feedback/low_rated.json, which the model card lists. A text sample whose
prompt was not logged (serve.log_prompts: false) cannot be drawn again: it is counted as skipped.
"""

from __future__ import annotations

import io

from tasks.core import paths
from tasks.core.errors import GenloopError
from tasks.core.orchestration import repro, task
from tasks.core.params import Params
from tasks.core.storage import dumps, read_json, sha256_bytes, staged_dir, write_json
from tasks.ingest.feedback import MANIFEST

OUT = paths.FEEDBACK
LOW = paths.LOW_RATED


def last_ratings(params: Params) -> list[dict]:
    """Each rated sample of this model line once, with its last rating, in every replica's log."""
    from tasks.core.params import line
    from tasks.monitoring import logs
    from tasks.registry import store
    from tasks.serving.process import SERVING

    log = logs.open_logs(params.require("monitor").logs, SERVING)
    last = {r["sample_id"]: r for r in log.rated(f"{store.name_of(line(params))}:")}
    return sorted(last.values(), key=lambda r: (-r["rating"], -r["at"], r["sample_id"]))


def ratings_sha256(rows: list[dict]) -> str:
    """A fingerprint of the ratings the stage reads: equal means its outputs would be the same."""
    import json

    return sha256_bytes(json.dumps(rows, sort_keys=True, default=str).encode())


def _png(image) -> bytes:
    """(C, H, W) floats in [0, 1] -> PNG bytes at the model's own size (what training reads)."""
    import numpy as np
    from PIL import Image

    px = np.clip(np.rint(np.asarray(image) * 255), 0, 255).astype(np.uint8)
    px = px[0] if px.shape[0] == 1 else px.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


class Drawer:
    """Draws a logged sample again with the version that drew it (loaded once per version)."""

    def __init__(self) -> None:
        self.models: dict[str, tuple] = {}

    def _model(self, tag: str) -> tuple:
        if tag not in self.models:
            from models import export
            from tasks.registry import store

            folder = store.folder(tag)  # its weights' hash checked
            self.models[tag] = (export.load(folder, "cpu"), export.describe(folder)["data"])
        return self.models[tag]

    def draw(self, row: dict) -> tuple[str, bytes] | None:
        """(relative path, bytes) of the sample, or None when it cannot be drawn again."""
        import torch

        model, data = self._model(row["model"])
        name = f"feedback-{row['sample_id']}"
        with torch.inference_mode():
            if data["kind"] == "image":
                classes = [str(c) for c in data.get("classes") or []]
                condition = classes.index(row["label"]) if row["asked"] and row["label"] in classes else None
                image = model.sample(n=row["n"], condition=condition, seed=row["seed"])[row["position"]]
                folder = f"{row['label']}/" if row["label"] in classes else ""  # a class's own folder
                return f"{folder}{name}.png", _png(image.cpu().numpy())
            if row["prompt"] is None:
                return None
            texts = model.sample(
                n=row["n"], condition=row["prompt"], seed=row["seed"], length=row["length"],
                temperature=row["temperature"],
            )  # fmt: skip
            return f"{name}.txt", texts[row["position"]].encode("utf-8")


def run(params: Params) -> dict:
    """Write data/feedback (the highly rated samples, drawn again) and the low-rated list."""
    retrain = params.retrain
    rows = last_ratings(params) if retrain is not None else []
    good = [r for r in rows if retrain is not None and r["rating"] >= retrain.min_rating]
    low = [r for r in rows if r["rating"] <= params.require("monitor").ratings.low]
    before = {f["sample_id"]: f for f in read_json(MANIFEST)["files"]} if MANIFEST.is_file() else {}
    drawer, files, skipped = Drawer(), [], []
    with staged_dir(OUT) as stage:
        for row in good:
            kept = before.get(row["sample_id"])
            if kept and kept["model"] == row["model"] and (OUT / kept["path"]).is_file():
                relative, data = kept["path"].removeprefix("files/"), (OUT / kept["path"]).read_bytes()
            else:
                try:
                    drawn = drawer.draw(row)
                except GenloopError as err:  # its version left the registry, or its files are damaged
                    skipped.append({"sample_id": row["sample_id"], "why": str(err).splitlines()[0]})
                    continue
                if drawn is None:
                    skipped.append({"sample_id": row["sample_id"], "why": "its prompt was not logged"})
                    continue
                relative, data = drawn
            target = stage / "files" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            files.append({
                "path": f"files/{relative}", "sha256": sha256_bytes(data), "size": len(data),
                "sample_id": row["sample_id"], "model": row["model"], "rating": row["rating"],
                "label": row["label"] if "/" in relative else None,
            })  # fmt: skip
        manifest = {"min_rating": retrain.min_rating if retrain else None, "files": files, "skipped": skipped}
        (stage / "manifest.json").write_text(dumps(manifest))
    keys = ("sample_id", "model", "rating", "comment", "label")
    write_json(LOW, {"low": [{k: r[k] for k in keys} for r in low], "rated": len(rows),
                     "ratings_sha256": ratings_sha256(rows)})  # fmt: skip
    return {"rated": len(rows), "written": len(files), "skipped": len(skipped), "low": len(low)}


@task(name="feedback")
def feedback_task() -> dict:
    """Run the DVC stage `feedback`: forced when the ratings changed since its last run (DVC cannot tell),
    else as DVC decides (its code or params)."""
    from tasks.core.params import load

    params = load()
    seen = read_json(LOW).get("ratings_sha256") if LOW.is_file() else None
    rows = last_ratings(params) if params.retrain is not None else []
    repro("feedback", force=seen != ratings_sha256(rows))
    manifest = read_json(MANIFEST)
    return {"written": len(manifest["files"]), "skipped": len(manifest["skipped"])}
