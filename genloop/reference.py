"""The documentation site's references, generated from the code at every build (docs/hooks.py), so
that neither can drift from it: every key of params.yaml with its type, bounds, value and comment, from
the typed params (tasks/core/params.py) and the file itself; and every command of the CLI, from Typer."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w-]*):(?P<value>[^#]*?)\s*(#\s?(?P<comment>.*))?$")
NOTE = re.compile(r"^\s*#\s?(?P<comment>.*)$")


def comments(text: str) -> dict[str, str]:
    """Each dotted key of a YAML file -> its comment: the comment lines right above it and the one on
    its line (sections' keys included)."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    last, column = "", -1  # the last key with a comment on its line, and that comment's column
    for line in text.splitlines():
        key = KEY.match(line)
        note = NOTE.match(line)
        if note and not key:
            if line.index("#") == column:  # a comment that goes on under the one above it
                found[last] += " " + note["comment"].strip()
            else:
                above.append(note["comment"].strip())
            continue
        if not key:
            above, column = [], -1
            continue
        indent = len(key["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key["key"]))
        dotted = ".".join(k for _, k in stack)
        own = key["comment"] or ""
        if own.startswith("  ") and last:  # indented further: the comment above it, going on
            found[last] += " " + own.strip()
            own = ""
        found[dotted] = " ".join(s for s in [*above, own.strip()] if s)
        if own:
            last, column = dotted, line.index("#")
        above = []
    return found


def _models(annotation: Any) -> list[type]:
    """The pydantic models an annotation allows (through Optional, unions and Annotated)."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _type(annotation: Any) -> str:
    """A type as a reader writes it: int | 'auto', list[int], null."""
    import types

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(dict.fromkeys(part for a in args for part in _type(a).split(" | ")))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is list:
        return f"list[{_type(args[0])}]"
    if annotation is type(None):
        return "null"
    return annotation.__name__ if isinstance(annotation, type) else repr(annotation)


def _bounds(annotation: Any, metadata: list) -> str:
    """The numeric bounds a field holds (its own, or its type's, as in Annotated[int, Field(ge=1)])."""
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    found = list(metadata)
    todo = [annotation]
    while todo:
        a = todo.pop()
        if typing.get_origin(a) is typing.Annotated:
            for m in typing.get_args(a)[1:]:
                found += getattr(m, "metadata", [m])
        todo += [x for x in typing.get_args(a) if typing.get_origin(a) is not typing.Literal]
    out = [f"{signs[k]} {getattr(m, k)}" for m in found for k in signs if getattr(m, k, None) is not None]
    return ", ".join(dict.fromkeys(out))


def params_rows(path: Path = Path("params.yaml")) -> list[tuple[str, str, str, str, str]]:
    """(key, type, bounds, value, comment) for every key of `path`, in its order."""
    import yaml

    from tasks.core.params import Params

    text = path.read_text()
    said = comments(text)
    rows = []

    def walk(data: dict, models: list[type], prefix: str) -> None:
        for key, value in data.items():
            field = next(
                (f for m in models for name, f in m.model_fields.items() if key in (name, f.alias)), None
            )
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and field is not None and _models(field.annotation):
                rows.append((dotted, "section", "", "", said.get(dotted, "")))
                walk(value, _models(field.annotation), dotted + ".")
                continue
            kind = _type(field.annotation) if field is not None else "(per family)"
            bounds = _bounds(field.annotation, field.metadata) if field is not None else ""
            rows.append((dotted, kind, bounds, yaml.safe_dump(value, default_flow_style=True).strip()
                         .removesuffix("...").strip(), said.get(dotted, "")))  # fmt: skip

    walk(yaml.safe_load(text), [Params], "")
    return rows


def params_markdown(path: Path = Path("params.yaml")) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        "# params.yaml",
        "",
        "Every key of the shipped `params.yaml`: its type and bounds as `tasks/core/params.py` checks them,",
        "its value here, and its comment. Generated from the code and the file at every build of this site.",
        "",
        "| key | type | bounds | value | what it sets |",
        "|---|---|---|---|---|",
    ]
    for key, kind, bounds, value, comment in params_rows(path):
        name = f"**`{key}`**" if kind == "section" else f"`{key}`"
        lines.append(f"| {name} | {cell(kind)} | {cell(bounds)} | `{cell(value)}` | {cell(comment)} |")
    return "\n".join(lines).replace("| `` |", "|  |") + "\n"


def cli_markdown() -> str:
    """Typer's own Markdown of every command and option (`typer <module> utils docs`)."""
    proc = subprocess.run(
        [sys.executable, "-m", "typer", "genloop.cli", "utils", "docs", "--name", "genloop",
         "--title", "The genloop command"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return proc.stdout


def write(folder: Path, params: Path = Path("params.yaml")) -> None:
    """Write both references into `folder`; a file whose text is the same is left alone (so that
    `mkdocs serve`, which watches the folder, does not rebuild for ever)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("params.md", params_markdown(params)), ("cli.md", cli_markdown())):
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
