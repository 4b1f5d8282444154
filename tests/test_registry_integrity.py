"""The registry never holds a broken model: a version is written aside and moved in whole, a kill -9
mid-copy leaves nothing listed, and weights that do not match their hash are refused and replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tasks.core.errors import GenloopError


def exported(folder: Path, size: int = 1 << 20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(os.urandom(size))
    (folder / "model.json").write_text('{"family": "vae"}\n')
    return folder


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """The store module; BentoML reads its home once per process, so a home set earlier is kept."""
    if "bentoml" not in sys.modules:
        monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "home"))
    from tasks.registry import store

    return store


@pytest.fixture
def tag():
    return f"genloop-test:v{uuid.uuid4().hex[:12]}"


def test_damaged_weights_are_refused_and_registered_again(registry, tag, tmp_path):
    model = exported(tmp_path / "export")
    version = tag.split(":")[1]
    registry.register(model, "test", version, {"lineage": {}}, {}, {})
    weights = registry.folder(tag) / "model.safetensors"
    good = weights.read_bytes()
    with open(weights, "r+b") as f:  # what a kill mid-copy left before: a truncated file
        f.truncate(len(good) - 1648)
    with pytest.raises(GenloopError, match=r"damaged.*does not match its weights_sha256"):
        registry.folder(tag)
    registry.register(model, "test", version, {"lineage": {}}, {}, {})  # the next evaluate repairs it
    assert (registry.folder(tag) / "model.safetensors").read_bytes() == good


def test_load_checks_the_hash(tmp_path):
    from models import export

    weights = exported(tmp_path / "m") / "model.safetensors"
    with pytest.raises(ValueError, match="does not match its weights_sha256"):
        export.check_weights(weights, "0" * 64)


SLOW_REGISTER = textwrap.dedent(
    """
    import shutil, sys, time
    from pathlib import Path

    real_tree = shutil.copytree

    def slow_copy(src, dst, **kw):  # the copy into the store, in small steps, so the kill lands mid-file
        with open(src, "rb") as a, open(dst, "wb") as b:
            while block := a.read(64 << 10):
                b.write(block)
                b.flush()
                time.sleep(0.01)
        return dst

    shutil.copytree = lambda src, dst, **kw: real_tree(src, dst, **{**kw, "copy_function": slow_copy})
    from tasks.registry import store

    store.register(Path(sys.argv[1]), "test", sys.argv[2], {}, {}, {})
    """
)


def test_a_kill_during_registration_leaves_no_version_and_no_litter(registry, tag, tmp_path):
    model = exported(tmp_path / "export", size=4 << 20)
    version = tag.split(":")[1]
    env = {**os.environ, "PYTHONPATH": str(Path.cwd()), "BENTOML_HOME": str(registry._bentoml_home())}
    child = subprocess.Popen([sys.executable, "-c", SLOW_REGISTER, str(model), version], env=env)
    staging = registry._bentoml_home() / "staging"
    deadline = time.monotonic() + 60
    while not any(p.name == "model.safetensors" and p.stat().st_size > 0 for p in staging.rglob("*")):
        assert child.poll() is None and time.monotonic() < deadline, "the copy never started"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert tag not in [v["tag"] for v in registry.versions()]  # nothing half-copied is listed
    with pytest.raises(GenloopError, match="no model version"):
        registry.folder(tag)
    registry.register(model, "test", version, {}, {}, {})  # the next registration works and tidies up
    assert tag in [v["tag"] for v in registry.versions()]
    assert list(staging.iterdir()) == []


def test_a_served_bento_runs_only_its_own_code(tmp_path, monkeypatch):
    """A Bento missing a module would import it from an installed genloop (an editable install finds
    the working tree); inside a Bento that is refused."""
    from models import check_own_code

    src = tmp_path / "bento" / "src"
    (src / "service").mkdir(parents=True)
    (tmp_path / "bento" / "bento.yaml").write_text("service: service.service:Genloop\n")
    monkeypatch.chdir(src)
    check_own_code(str(src / "service" / "__init__.py"))
    with pytest.raises(ImportError, match="not the code of the Bento"):
        check_own_code(str(Path(__file__).parents[1] / "service" / "__init__.py"))
    monkeypatch.chdir(tmp_path)  # not in a Bento: serving from source is fine
    check_own_code(str(Path(__file__).parents[1] / "service" / "__init__.py"))


def test_a_bento_version_changes_with_the_code_it_carries(tmp_path):
    """Same champion and settings but upgraded service code: a new Bento, not the old one reused."""
    from tasks import package

    for name in ("service/service.py", "service/ui/app.js", "models/vae.py", "tasks/deploy.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    before = package.code(tmp_path)
    assert sorted(before) == ["models/vae.py", "service/service.py", "service/ui/app.js"]  # what it carries
    (tmp_path / "tasks/deploy.py").write_text("v2\n")
    assert package.code(tmp_path) == before  # not carried: not part of the version
    (tmp_path / "service/service.py").write_text("v2\n")
    assert package.code(tmp_path) != before
