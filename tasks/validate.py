"""validate: a Great Expectations gate on data/raw. A failing batch stops the pipeline.

Each file becomes one row of features (decodable, shape, value range, digest, ... or for text:
UTF-8 validity, size, charset coverage, PII hits); a GX expectation suite per data kind checks them.
On failure: exit != 0, a summary naming the failed expectations and files, and GX data docs (HTML)
under artifacts/validate/data_docs/. augment refuses any data/raw that has no passing summary.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from prefect import task

from tasks.core import paths
from tasks.core.errors import GenloopError
from tasks.core.orchestration import publish_markdown, repro
from tasks.core.params import ImageExpectations, Params, TextExpectations
from tasks.core.storage import read_json, sha256_bytes, write_json
from tasks.ingest import batches
from tasks.ingest.batches import describe_failures

# E-mail addresses and API-key-like tokens (AWS, GitHub, Slack, OpenAI-style, generic key=value).
PII_PATTERNS = [
    re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"),
    re.compile(r"(?i)\b(?:api[_-]?key|secret|access[_-]?token)\b\s*[:=]\s*['\"]?[A-Za-z0-9/+_\-]{16,}"),
]
PRINTABLE_ASCII = frozenset(chr(c) for c in range(32, 127)) | {"\n", "\t", "\r"}


def image_features(root: Path, files: list[dict]):  # -> pandas.DataFrame
    import numpy as np
    import pandas as pd
    from PIL import Image

    rows = []
    for f in files:
        row = {
            "path": f["path"],
            "label": f["label"],
            "decodable": False,
            "height": -1,
            "width": -1,
            "channels": -1,
            "min_value": 0.0,
            "max_value": 0.0,
            "has_nan": False,
            "digest": f["path"],
        }
        try:
            with Image.open(root / f["path"]) as img:
                img.load()  # decodes every byte: a truncated file fails here
                px = np.asarray(img)
        except (OSError, SyntaxError, ValueError):
            rows.append(row)
            continue
        values = px.astype(np.float64)
        row.update(
            decodable=True,
            height=px.shape[0],
            width=px.shape[1],
            channels=1 if px.ndim == 2 else px.shape[2],
            min_value=float(np.nanmin(values)) if values.size else 0.0,
            max_value=float(np.nanmax(values)) if values.size else 0.0,
            has_nan=bool(np.isnan(values).any()),
            digest=sha256_bytes(
                repr(px.shape).encode() + px.tobytes()
            ),  # duplicates by pixels, not file bytes
        )
        rows.append(row)
    return pd.DataFrame(rows)


def text_features(root: Path, files: list[dict], charset: str):  # -> pandas.DataFrame
    import pandas as pd

    rows = []
    for f in files:
        raw = (root / f["path"]).read_bytes()
        try:
            text = raw.decode("utf-8")
            valid = True
        except UnicodeDecodeError:
            text, valid = "", False
        inside = len(text) if charset == "any" else sum(ch in PRINTABLE_ASCII for ch in text)
        rows.append(
            {
                "path": f["path"],
                "utf8_valid": valid,
                "n_chars": len(text),
                "charset_coverage": inside / len(text) if text else 0.0,
                "pii_hits": sum(len(p.findall(text)) for p in PII_PATTERNS),
            }
        )
    return pd.DataFrame(rows)


def image_suite(e: ImageExpectations, labels: list[str]) -> tuple[list, list]:
    """(expectations on the per-file table, expectations on the per-class table)."""
    import great_expectations.expectations as gxe

    files = [
        gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=e.height, max_value=e.height),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=e.width, max_value=e.width),
        gxe.ExpectColumnValuesToBeBetween(column="channels", min_value=e.channels, max_value=e.channels),
        gxe.ExpectColumnValuesToBeBetween(column="min_value", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="max_value", max_value=255),
        gxe.ExpectColumnValuesToBeInSet(column="has_nan", value_set=[False]),
        gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column="digest", min_value=1 - e.max_duplicate_rate
        ),
    ]
    if labels:
        files.append(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=labels))
    classes = [gxe.ExpectColumnValuesToBeBetween(column="count", min_value=e.min_per_class)]
    return files, classes


def text_suite(e: TextExpectations) -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeInSet(column="utf8_valid", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="n_chars", min_value=1),
        gxe.ExpectColumnSumToBeBetween(column="n_chars", min_value=e.min_chars),
        gxe.ExpectColumnValuesToBeBetween(column="charset_coverage", min_value=e.min_charset_coverage),
        gxe.ExpectColumnValuesToBeBetween(column="pii_hits", max_value=0, mostly=1 - e.max_pii_file_rate),
    ]


def _gate(tables: dict[str, tuple], docs_dir: Path):  # -> CheckpointResult
    """Run one GX checkpoint over named (dataframe, expectations) pairs and write data docs."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults

    site = {
        "class_name": "SiteBuilder",
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir.resolve()),
        },
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={"genloop": site},
        progress_bars={"globally": False},
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    source = context.data_sources.add_pandas("genloop")
    definitions, frames = [], {}
    for name, (frame, expectations) in tables.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definitions.append(
            context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        )
        frames[name] = frame
    results = {}
    for definition in definitions:  # one batch per table: a checkpoint takes one dataframe per run
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"gate-{definition.name}",
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="docs", site_names=["genloop"])],
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["path"]},
            )
        )
        results[definition.name] = checkpoint.run(batch_parameters={"dataframe": frames[definition.name]})
    return results


def _failures(results: dict) -> list[dict]:
    failures = []
    for table, checkpoint_result in results.items():
        for run in checkpoint_result.run_results.values():
            for r in run.results:
                if r.success:
                    continue
                cfg = r.expectation_config
                rows = r.result.get("unexpected_index_list") or []
                failures.append(
                    {
                        "table": table,
                        "expectation": cfg.type,
                        "column": cfg.kwargs.get("column"),
                        "observed": r.result.get("observed_value"),
                        "unexpected_count": r.result.get("unexpected_count"),
                        "files": sorted(str(row.get("path", row.get("label"))) for row in rows),
                    }
                )
    return failures


def run(params: Params) -> dict:
    """Validate data/raw; raise GenloopError (after writing the summary and data docs) when it fails."""
    import pandas as pd

    manifest = read_json(paths.MANIFEST)
    files, kind = manifest["files"], manifest["kind"]
    shutil.rmtree(paths.DATA_DOCS, ignore_errors=True)  # docs of this run only
    paths.VALIDATE.mkdir(parents=True, exist_ok=True)
    if kind == "image":
        e = params.validate_.image
        frame = image_features(paths.RAW, files)
        declared = [str(x) for x in e.labels] if e.labels is not None else []
        observed = frame["label"].value_counts().to_dict()
        counts = [
            {"path": f"class {k}", "label": k, "count": int(observed.get(k, 0))}
            for k in sorted(set(declared) | {k for k in observed if k is not None})
        ]
        file_checks, class_checks = image_suite(e, declared)
        tables = {"image_files": (frame, file_checks), "image_classes": (pd.DataFrame(counts), class_checks)}
    else:
        frame = text_features(paths.RAW, files, params.validate_.text.charset)
        tables = {"text_files": (frame, text_suite(params.validate_.text))}
    failures = _failures(_gate(tables, paths.DATA_DOCS))
    summary = {
        "success": not failures,
        "kind": kind,
        "files": len(files),
        "manifest_sha256": batches.manifest_hash(),
        "failures": failures,
        "data_docs": str(paths.DATA_DOCS / "index.html"),
    }
    if failures:
        summary["rejected"] = batches.reject()
    else:
        batches.accept()
    write_json(paths.VALIDATION_SUMMARY, summary)
    if failures:
        raise GenloopError(describe_failures(summary))
    return summary


@task(name="validate")
def validate_task() -> dict:
    """Run the DVC stage `validate` and show its verdict in the Prefect UI."""
    try:
        repro("validate")
    finally:
        if paths.VALIDATION_SUMMARY.is_file():
            summary = read_json(paths.VALIDATION_SUMMARY)
            verdict = "passed" if summary["success"] else describe_failures(summary)
            publish_markdown(
                "validate",
                f"### Data validation\n\n```\n{verdict}\n```\n\nData docs: `{summary['data_docs']}`",
                "Great Expectations gate on data/raw",
            )
    return read_json(paths.VALIDATION_SUMMARY)
