"""validate: a Great Expectations gate on data/raw. A failing batch stops the pipeline.

Each file becomes one row of features (decodable, shape, value range, digest, ... or for text:
UTF-8 validity, size, charset coverage, e-mail addresses, secrets found by detect-secrets:
tasks/ingest/secrets.py); a GX expectation suite per data kind checks them. A batch holding a secret
is kept aside for its owner only (.genloop/quarantine/, 0600), never under artifacts/.
What is expected comes from params.yaml, or with `auto` (the default for image shape, channels and
labels, and for the text charset) from the dataset's reference, recorded from its first batch that
passed (tasks/ingest/reference.py): pointing data.source at a folder of your own is all it takes.
On failure: exit != 0, a message per failed expectation saying what was expected (and from where),
what was found with a few files, and the param that would accept it; a summary; GX data docs (HTML)
under artifacts/validate/data_docs/. augment refuses any data/raw that has no passing summary.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tasks.core import paths
from tasks.core.datasets import class_order
from tasks.core.errors import GenloopError
from tasks.core.orchestration import publish_markdown, repro, task
from tasks.core.params import Params
from tasks.core.storage import read_json, sha256_bytes, write_json
from tasks.ingest import batches, reference
from tasks.ingest.batches import describe_failures
from tasks.ingest.reference import Expected

# Personal data: e-mail addresses (a share of files may hold some: validate.text.max_pii_file_rate).
# Secrets (keys, tokens, passwords) are detect-secrets' job and stop any batch (tasks/ingest/secrets.py).
PII_PATTERNS = [re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")]
PRINTABLE_ASCII = frozenset(chr(c) for c in range(32, 127)) | {"\n", "\t", "\r"}
EXAMPLES = 3  # files named per failure in the message (the summary lists them all)


def image_features(root: Path, files: list[dict]):  # -> pandas.DataFrame
    import numpy as np
    import pandas as pd

    from tasks.core.pictures import read_pixels

    rows = []
    for f in files:
        row = {
            "path": f["path"],
            "label": f["label"],
            "decodable": False,
            "height": None,  # unknown: only the decodable check fails for such a file
            "width": None,
            "channels": None,
            "min_value": 0.0,
            "max_value": 0.0,
            "has_nan": False,
            "digest": f["path"],
        }
        try:
            px = read_pixels(root / f["path"])
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
            digest=sha256_bytes(repr(px.shape).encode() + px.tobytes()),  # duplicates by pixels, not bytes
        )
        rows.append(row)
    return pd.DataFrame(rows)


def read_texts(root: Path, files: list[dict]) -> dict[str, str | None]:
    """Each file's text, or None where it is not valid UTF-8."""
    texts: dict[str, str | None] = {}
    for f in files:
        try:
            texts[f["path"]] = (root / f["path"]).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            texts[f["path"]] = None
    return texts


def printable(ch: str) -> bool:
    return ch.isprintable() or ch in "\n\t\r"


def text_features(texts: dict[str, str | None], allowed: frozenset[str] | None):  # -> pandas.DataFrame
    """One row per file; `allowed` is the charset (None: any character, or printable in any script when
    a dataset's first batch defines its charset)."""
    import pandas as pd

    from tasks.ingest import secrets

    found = secrets.scan(texts)
    rows = []
    for path, text in texts.items():
        text = text or ""
        outside = sorted(
            {ch for ch in text if (ch not in allowed if allowed is not None else not printable(ch))}
        )
        inside = len(text) - sum(text.count(ch) for ch in outside)
        rows.append(
            {
                "path": path,
                "utf8_valid": texts[path] is not None,
                "n_chars": len(text),
                "charset_coverage": inside / len(text) if text else 0.0,
                "outside": "".join(outside[:12]),
                "pii_hits": sum(len(p.findall(text)) for p in PII_PATTERNS),
                "secret_hits": len(found.get(path, [])),
                "secrets": "; ".join(
                    f"line {n} ({kind})" for n, kind in found.get(path, [])
                ),  # never the value
            }
        )
    return pd.DataFrame(rows)


# --- what is expected ------------------------------------------------------------------------------
def image_expected(params: Params, frame, ref: dict | None) -> dict[str, Expected]:
    """height, width, channels and labels: from params.yaml, else the reference, else this batch."""
    e = params.validate_.image
    ok = frame[frame["decodable"]]
    shape = reference.majority(list(zip(ok["channels"], ok["height"], ok["width"], strict=True)))
    c, h, w = (int(v) for v in shape) if shape else (None, None, None)
    labels = class_order(str(v) for v in frame["label"] if v is not None)
    known = None
    if ref is not None:
        known = dict(zip(("channels", "height", "width"), ref["shape"], strict=True)) | {
            "labels": ref["labels"]
        }
    expected = {
        key: reference.resolve(getattr(e, key), known, key, seen, f"validate.image.{key}")
        for key, seen in (("height", h), ("width", w), ("channels", c))
    }
    if e.labels is None:  # any label
        expected["labels"] = Expected(None, "params", "validate.image.labels")
    else:
        declared = e.labels if e.labels == "auto" else [str(x) for x in e.labels]
        expected["labels"] = reference.resolve(declared, known, "labels", labels, "validate.image.labels")
    return expected


def text_allowed(params: Params, ref: dict | None) -> tuple[frozenset[str] | None, Expected]:
    """The characters each file must mostly consist of, and where that came from."""
    charset = params.validate_.text.charset
    if charset == "any":
        return None, Expected("any", "params", "validate.text.charset")
    if charset == "printable-ascii":
        return PRINTABLE_ASCII, Expected("printable ASCII", "params", "validate.text.charset")
    if ref is not None and "charset" in ref:
        said = f"the dataset's {len(ref['charset'])} characters"
        return frozenset(ref["charset"]), Expected(said, "reference", "validate.text.charset")
    return None, Expected("printable characters", "first batch", "validate.text.charset")


def image_suite(params: Params, expected: dict[str, Expected], labelled: bool) -> tuple[list, list]:
    """(expectations on the per-file table, expectations on the per-class table). A labelled batch (any
    file in a class folder) must be labelled throughout: a file outside the folders has no class."""
    import great_expectations.expectations as gxe

    e = params.validate_.image
    files = [gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True])]
    for key in ("height", "width", "channels"):
        value = expected[key].value
        if value is not None:
            files.append(gxe.ExpectColumnValuesToBeBetween(column=key, min_value=value, max_value=value))
    files += [
        gxe.ExpectColumnValuesToBeBetween(column="min_value", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="max_value", max_value=255),
        gxe.ExpectColumnValuesToBeInSet(column="has_nan", value_set=[False]),
        gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column="digest", min_value=1 - e.max_duplicate_rate
        ),
    ]
    if labelled:
        files.append(gxe.ExpectColumnValuesToNotBeNull(column="label"))
    if expected["labels"].value is not None:
        files.append(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=expected["labels"].value))
    classes = [gxe.ExpectColumnValuesToBeBetween(column="count", min_value=e.min_per_class)]
    return files, classes


def text_suite(params: Params) -> list:
    import great_expectations.expectations as gxe

    e = params.validate_.text
    return [
        gxe.ExpectColumnValuesToBeInSet(column="utf8_valid", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="n_chars", min_value=1),
        gxe.ExpectColumnSumToBeBetween(column="n_chars", min_value=e.min_chars),
        gxe.ExpectColumnValuesToBeBetween(column="charset_coverage", min_value=e.min_charset_coverage),
        gxe.ExpectColumnValuesToBeBetween(column="pii_hits", max_value=0, mostly=1 - e.max_pii_file_rate),
        gxe.ExpectColumnValuesToBeBetween(column="secret_hits", max_value=0),
    ]


# --- running the gate ------------------------------------------------------------------------------
def _gate(tables: dict[str, tuple], docs_dir: Path):  # -> {table: CheckpointResult}
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


# --- saying what failed ----------------------------------------------------------------------------
def _examples(files: list[str]) -> str:
    shown = ", ".join(files[:EXAMPLES])
    return f"{shown} (+{len(files) - EXAMPLES} more)" if len(files) > EXAMPLES else shown


def _found(frame, column: str, files: list[str]) -> str:
    """The distinct values of `column` among `files`, most common first."""
    values = frame[frame["path"].isin(files)][column].value_counts()
    return ", ".join(f"{v:g} ({n} file{'s' if n != 1 else ''})" for v, n in values.items())


def explain(f: dict, frame, expected: dict[str, Expected], params: Params) -> str:
    """One line per failed expectation: what was expected (and from where), what was found (a few
    files), and the param that would accept it."""
    col, files = f["column"], f["files"]
    img, txt = params.validate_.image, params.validate_.text
    if col == "decodable":
        return f"{len(files)} file(s) do not decode as images: {_examples(files)} (fix or remove them)"
    if col in ("height", "width", "channels"):
        exp = expected[col]
        unit = " px" if col != "channels" else " (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA)"
        top = f"{frame[frame['path'].isin(files)][col].value_counts().index[0]:g}"
        return (
            f"{col}: expected {exp.value}{unit} ({exp.said()}); found {_found(frame, col, files)}, e.g. "
            f"{_examples(files)}; to expect {top} instead, set {exp.param}: {top} (or remove those files)"
        )
    if col in ("min_value", "max_value", "has_nan"):
        return f"pixel values outside 0..255 or NaN in {len(files)} file(s): {_examples(files)} (8-bit only)"
    if col == "label" and f["expectation"] == "expect_column_values_to_not_be_null":
        outside = frame[frame["label"].isna()]["path"].tolist()
        return (
            f"{len(outside)} file(s) sit outside any class folder, e.g. {_examples(outside)}: move them into "
            "one (labels are the folder names), or put every file at the top for an unlabelled dataset"
        )
    if col == "label":
        exp = expected["labels"]
        new = sorted({str(v) for v in frame[frame["path"].isin(files)]["label"]})
        everything = class_order([*exp.value, *new])
        return (
            f"labels: expected {', '.join(exp.value) or 'none'} ({exp.said()}); found new label(s) "
            f"{', '.join(new)} in {len(files)} file(s), e.g. {_examples(files)}; to accept them, set "
            f"{exp.param}: [{', '.join(everything)}] (or null for any labels)"
        )
    if col == "digest":
        dup = frame[frame["digest"].duplicated(keep=False)]["path"].tolist()
        rate = 1 - f["observed"] if isinstance(f["observed"], int | float) else None
        found = f"{rate:.1%} of the images" if rate is not None else f"{len(dup)} images"
        return (
            f"duplicates: expected at most {img.max_duplicate_rate:.0%} (validate.image.max_duplicate_rate); "
            f"found {found} repeating another, e.g. {_examples(sorted(dup))}; to accept them, raise "
            "validate.image.max_duplicate_rate"
        )
    if col == "count":
        counts = frame["label"].value_counts()
        found = ", ".join(
            f"{c.removeprefix('class ')}: {int(counts.get(c.removeprefix('class '), 0))}" for c in files
        )
        return (
            f"images per class: expected at least {img.min_per_class} (validate.image.min_per_class); found "
            f"{found}; to accept them, lower validate.image.min_per_class"
        )
    if col == "utf8_valid":
        return f"{len(files)} file(s) are not valid UTF-8: {_examples(files)} (save them as UTF-8)"
    if col == "n_chars" and f["expectation"] == "expect_column_sum_to_be_between":
        return (
            f"corpus size: expected at least {txt.min_chars} characters (validate.text.min_chars); found "
            f"{f['observed']} in {len(frame)} file(s); to accept it, set validate.text.min_chars: "
            f"{f['observed']}"
        )
    if col == "n_chars":
        return f"{len(files)} empty file(s): {_examples(files)} (remove them)"
    if col == "charset_coverage":
        exp = expected["charset"]
        rows = frame[frame["path"].isin(files)]
        outside = "".join(sorted(set("".join(rows["outside"]))))[:20]
        return (
            f"characters: expected at least {txt.min_charset_coverage:.0%} of each file's characters among "
            f"{exp.value} ({exp.said()}); found {rows['charset_coverage'].min():.1%} in {len(files)} "
            f"file(s), e.g. {_examples(files)} (characters outside: {outside!r}); to accept them, set "
            "validate.text.charset: any (or lower validate.text.min_charset_coverage)"
        )
    if col == "pii_hits":
        return (
            f"personal data: expected at most {txt.max_pii_file_rate:.0%} of files with an e-mail address "
            f"(validate.text.max_pii_file_rate); found {len(files)}: {_examples(files)} "
            "(remove them, or raise validate.text.max_pii_file_rate)"
        )
    if col == "secret_hits":
        rows = frame[frame["path"].isin(files)].sort_values("path")
        spots = [f"{r.path}: {r.secrets}" for r in rows.itertuples()]
        more = f"; and {len(spots) - EXAMPLES} more file(s)" if len(spots) > EXAMPLES else ""
        return (
            f"secrets: a model trained on them can repeat them to anyone; found in {len(files)} file(s): "
            f"{'; '.join(spots[:EXAMPLES])}{more}. Remove them (a line that only looks like one passes with "
            "`pragma: allowlist secret` on it)"
        )
    return f"{f['expectation']}({col}): observed {f['observed']}; files: {_examples(files)}"


# --- the stage -------------------------------------------------------------------------------------
def run(params: Params) -> dict:
    """Validate data/raw; raise GenloopError (after writing the summary and data docs) when it fails."""
    import pandas as pd

    batches.check_raw()  # the files are what collect wrote (and the manifest says)
    manifest = read_json(paths.MANIFEST)
    files, kind, source = manifest["files"], manifest["kind"], manifest["source"]
    shutil.rmtree(paths.DATA_DOCS, ignore_errors=True)  # docs of this run only
    paths.VALIDATE.mkdir(parents=True, exist_ok=True)
    ref = reference.load(source)
    if ref is not None and ref.get("kind") != kind:
        raise GenloopError(
            f"{source} held {ref.get('kind')} data when its reference was recorded, and holds {kind} now: "
            f"delete {reference.path_of(source)} to start the dataset afresh"
        )
    if kind == "image":
        frame = image_features(paths.RAW, files)
        expected = image_expected(params, frame, ref)
        declared = expected["labels"].value or []
        observed = frame["label"].value_counts().to_dict()
        counts = [
            {"path": f"class {k}", "label": k, "count": int(observed.get(k, 0))}
            for k in sorted(set(declared) | {k for k in observed if k is not None})
        ]
        labelled = bool(frame["label"].notna().any())
        file_checks, class_checks = image_suite(params, expected, labelled)
        texts = None
        tables = {"image_files": (frame, file_checks)}
        if counts:  # an unlabelled dataset (every file at the top of the source) has no classes to count
            tables["image_classes"] = (pd.DataFrame(counts), class_checks)
    else:
        texts = read_texts(paths.RAW, files)
        allowed, charset = text_allowed(params, ref)
        expected = {"charset": charset}
        frame = text_features(texts, allowed)
        tables = {"text_files": (frame, text_suite(params))}
    failures = _failures(_gate(tables, paths.DATA_DOCS))
    for f in failures:
        f["message"] = explain(f, frame, expected, params)
    summary = {
        "success": not failures,
        "kind": kind,
        "files": len(files),
        "manifest_sha256": batches.manifest_hash(),
        "expected": {k: e.value for k, e in expected.items()},  # the same values, the same summary
        "failures": failures,
        "data_docs": str(paths.DATA_DOCS / "index.html"),
    }
    if ref is not None:
        summary["reference"] = str(reference.path_of(source))
    if failures:
        summary["expected_from"] = {k: {"from": e.origin, "param": e.param} for k, e in expected.items()}
        holds_secrets = any(f["column"] == "secret_hits" for f in failures)
        summary["restored"] = paths.RAW_PREVIOUS.exists()  # a batch that passed before, put back
        summary["rejected"] = batches.reject(private=holds_secrets)
    else:
        if ref is None:  # the dataset's first batch that passed: its schema is the reference from now on
            made = schema(expected, texts)
            summary["reference"] = str(reference.record(source, made, summary["manifest_sha256"]))
        batches.accept()
    write_json(paths.VALIDATION_SUMMARY, summary)
    if failures:
        raise GenloopError(describe_failures(summary))
    return summary


def schema(expected: dict[str, Expected], texts: dict | None) -> dict:
    """What a batch that passed holds: its dataset's reference from now on."""
    if texts is None:
        shape = [expected[k].value for k in ("channels", "height", "width")]
        return {"kind": "image", "shape": shape, "labels": expected["labels"].value}
    return {"kind": "text", "charset": "".join(sorted(set("".join(t for t in texts.values() if t))))}


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
