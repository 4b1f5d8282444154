"""The documentation site builds strictly, its references cover the code, and the README's links hold."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from genloop.reference import comments, params_rows
from tests.conftest import REPO


def test_the_site_builds_strictly_with_references_generated_from_the_code(tmp_path):
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = (tmp_path / "site/reference/params/index.html").read_text()
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, keys in shipped.items():  # every key of every section, with its type
        for key in keys or {}:
            assert f"{section}.{key}" in params, f"{section}.{key}"
    cli = (tmp_path / "site/reference/cli/index.html").read_text()
    from genloop.cli import app

    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert commands and all(f"genloop {name}" in cli for name in commands), commands
    for page in ("stages/validate", "operations/monitor", "operations/scaling-out", "benchmarks"):
        assert (tmp_path / f"site/{page}/index.html").is_file(), page


def test_the_params_reference_gives_types_bounds_and_comments():
    rows = {
        key: (kind, bounds, value, said)
        for key, kind, bounds, value, said in params_rows(REPO / "params.yaml")
    }
    assert rows["collect.workers"] == ("int", ">= 1, <= 64", "8", "concurrent downloads from S3")
    assert rows["validate.image.height"][:3] == ("int | 'auto'", ">= 1", "auto")
    assert rows["monitor.window_samples"][0] == "int | null"
    text = "a:\n  b: 1   # first line\n         # goes on\n  # above c\n  c: 2\n"
    assert comments(text) == {"a": "", "a.b": "first line goes on", "a.c": "above c"}


def test_the_readme_is_short_and_its_links_hold():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 80
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links and all((REPO / link).exists() for link in links), [
        x for x in links if not (REPO / x).exists()
    ]
    assert ":3000/ui" not in readme  # the address is the one the demo prints, from serve.port
    assert Path(REPO / "mkdocs.yml").is_file()
