"""Shared fixtures: a throwaway project folder (git + DVC) and helpers to run the real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.core.storage import sha256_file

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The project files a stage needs at run time: DVC hashes its code deps from the project folder.
PROJECT_FILES = [
    "params.yaml",
    "dvc.yaml",
    ".dvcignore",
    ".gitignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "tasks",
    "models",
    "flows",
    "service",
    "prefect.yaml",
    "requirements.lock",
]

# DVC runs `genloop stage ...` through the shell: the venv's commands must be on PATH.
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"


# The files that take minutes (trained projects, deployed services, a Prefect server), longest first:
# `--dist loadfile --no-loadscope-reorder` hands files out in collection order (xdist's default would
# sort them by their number of tests, putting one-test files of minutes last), so each worker starts on
# a long one and the quick files fill the gaps at the end instead of one long file running alone.
LONGEST_FIRST = [
    "test_service.py",
    "test_site.py",
    "test_monitor.py",
    "test_workers.py",
    "test_flow.py",
    "test_train.py",
    "test_prefect_server.py",
    "test_deploy_safety.py",
    "test_pipeline.py",
    "test_evaluate.py",
    "test_text_service.py",
    "test_tune_storage.py",
    "test_tune.py",
    "test_feedback.py",
    "test_s3.py",
    # the unit tier's longest files (make check), also longest first
    "test_validate.py",
    "test_augment.py",
    "test_metrics.py",
    "test_monitor_parts.py",
    "test_collect.py",
    "test_gate.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's order is kept


def pytest_configure(config: pytest.Config) -> None:
    # One cache of trained featurizers for the run (tasks/quality/featurizer.py), fresh each run: the
    # projects of the tests evaluate the same digits, and each would train the same eye for 20 s.
    # xdist's workers inherit it from the controller.
    # The stages of every test fork from this run's own warm runner (genloop/runner.py), stopped at the end.
    if not hasattr(config, "workerinput"):
        import tempfile

        config.genloop_cache = tempfile.mkdtemp(prefix="genloop-test-cache-")
        os.environ["GENLOOP_CACHE_DIR"] = config.genloop_cache
        config.genloop_runners = tempfile.mkdtemp(prefix="genloop-test-runner-")
        os.environ["GENLOOP_RUNNER_DIR"] = config.genloop_runners


def pytest_unconfigure(config: pytest.Config) -> None:
    if hasattr(config, "genloop_cache"):
        shutil.rmtree(config.genloop_cache, ignore_errors=True)
    if hasattr(config, "genloop_runners"):
        from genloop import runner

        runner.stop()
        shutil.rmtree(config.genloop_runners, ignore_errors=True)


def _merge(base: dict, over: dict) -> dict:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


class Project:
    def __init__(self, root: Path, env: dict | None = None) -> None:
        self.root = root
        self.env = env or {}  # for every command run in it (on top of os.environ)

    def set_params(self, **sections: dict) -> None:
        path = self.root / "params.yaml"
        params = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump(_merge(params, sections), sort_keys=False))

    def params(self):
        from tasks.core.params import load

        return load(self.root / "params.yaml")

    def run(self, *args: str, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run a command of the venv (genloop, dvc) in the project, capturing its output."""
        proc = subprocess.run(
            [str(BIN / args[0]), *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            env={**os.environ, **self.env, **(env or {})},
            timeout=600,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def snapshot(self, folder: str = "data") -> dict[str, str]:
        """Every file under `folder` with its sha256: equal snapshots mean byte-identical trees."""
        base = self.root / folder
        if not base.exists():
            return {}
        return {
            p.relative_to(base).as_posix(): sha256_file(p) for p in sorted(base.rglob("*")) if p.is_file()
        }


def new_project(root: Path) -> Project:
    """Copy the project files into `root` and make it a git repository with a first commit."""
    root.mkdir(parents=True)
    for name in PROJECT_FILES:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    git = ["git", "-c", "user.name=genloop-tests", "-c", "user.email=tests@genloop.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    # a first commit, as in any real checkout (dvclive fails on a repository without one)
    subprocess.run([*git, "commit", "-qm", "project"], cwd=root, check=True)
    return _opened(root)


def _opened(root: Path) -> Project:
    # its own registry (BentoML model store), as it would have by default in its folder
    return Project(root, {"BENTOML_HOME": str(root / ".genloop" / "bentoml")})


# One quick Gaussian as the image baseline, for tests about something else than the baseline (the
# default grid of mixtures takes half a minute on digits); its wide variance floor puts it at about
# 7.3 bits/dim on digits, which a briefly trained VAE beats
SMALL_BASELINE = {"baseline": {"gmm_components": [1], "gmm_reg_covar": [1.0e-2]}}


def undeclared_params(log: Path) -> dict[str, list[str]]:
    """Params each stage read (GENLOOP_PARAMS_LOG, written by `genloop stage`) that its `params:` list in
    dvc.yaml does not cover: {stage: keys}. A listed section covers every key under it."""
    import json

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing: dict[str, list[str]] = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        listed = stages[record["stage"]].get("params", [])
        keys = [k for k in record["read"] if not any(k == p or k.startswith(p + ".") for p in listed)]
        if keys:
            missing[record["stage"]] = keys
    return missing


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _enter(project: Project, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.chdir(project.root)
    monkeypatch.setenv("BENTOML_HOME", project.env["BENTOML_HOME"])
    return project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """A fresh project folder (a git repository with DVC), the working directory for the test."""
    return _enter(new_project(tmp_path / "project"), monkeypatch)


@pytest.fixture(scope="session")
def prepared_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose digits are collected, validated and augmented (`dvc repro augment` on the default
    params), made once per worker. Tests that need the digits ready, not the data stages themselves,
    start from a copy (`copy_project`): the copy's DVC finds those stages up to date, as a clone that
    pulled its data would."""
    project = new_project(tmp_path_factory.mktemp("prepared") / "project")
    project.run("dvc", "repro", "augment", check=True)
    return project.root


@pytest.fixture(scope="session")
def champion_digits(tmp_path_factory: pytest.TempPathFactory, prepared_digits: Path) -> Path:
    """A copy of `prepared_digits` whose briefly trained VAE passed a lenient gate: the champion of its
    registry, not packaged. Made once per worker, for the tests of a deployed service and those that
    need a registered champion (the `champion` fixture). Its copies inherit its params: model SMALL_VAE,
    train QUICK with max_steps 240 and steps_per_epoch 40, evaluate LENIENT."""
    from tests.test_evaluate import LENIENT, SMALL_VAE
    from tests.test_train import QUICK

    project = copy_project(prepared_digits, tmp_path_factory.mktemp("champion") / "project")
    project.set_params(
        model=SMALL_VAE,
        train=QUICK | {"max_steps": 240, "steps_per_epoch": 40},
        evaluate=LENIENT,  # a baseline and a gate the quick model passes: it is champion
    )
    project.run("dvc", "repro", "evaluate", check=True)
    return project.root


def copy_project(template: Path, root: Path) -> Project:
    """A copy of a project folder (git, DVC cache, data, registry), but not DVC's run-time files."""
    dvc = template / ".dvc"
    shutil.copytree(template, root, symlinks=True, ignore=lambda d, names: ["tmp"] if Path(d) == dvc else [])
    return _opened(root)


@pytest.fixture
def digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prepared_digits: Path) -> Project:
    """A copy of `prepared_digits`, the working directory for the test."""
    return _enter(copy_project(prepared_digits, tmp_path / "project"), monkeypatch)


@pytest.fixture
def champion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, champion_digits: Path) -> Project:
    """A copy of `champion_digits` (trained, evaluated, champion; not packaged), the working directory."""
    return _enter(copy_project(champion_digits, tmp_path / "project"), monkeypatch)


def write_png(path: Path, pixels) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def digit_folder(tmp_path: Path) -> Path:
    """A local folder of 8x8 PNGs in label sub-folders (3 classes x 25 distinct images)."""
    import numpy as np

    root = tmp_path / "digits"
    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        for i in range(25):
            write_png(root / label / f"{i:03d}.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    return root


@contextlib.contextmanager
def serving(project, model: str):
    """`genloop serve --model MODEL` in the project on a free port until the block ends; yields its URL
    once /readyz answers."""
    import signal
    import time

    import httpx

    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "genloop"), "serve", "--model", model, "--port", str(port)],
        cwd=project.root, env={**os.environ, **project.env}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def _folders():
    """bench/folders.py: the folders like a user's own that the bench trains on."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("genloop_bench_folders", REPO / "bench/folders.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def draw_shapes(
    root: Path, per_class: int, size: int = 16, seed: int = 0, classes=("circle", "square", "triangle")
) -> Path:
    """A folder of grey `size` x `size` PNGs, one sub-folder per shape, each shape at a random place and
    scale: what a user's own small image set looks like (not 8x8, not digits)."""
    return _folders().shapes(root, per_class, size, seed, classes)


def draw_colour_shapes(root: Path, per_class: int, size: int = 16, seed: int = 0) -> Path:
    """A folder of RGB PNGs: red circles, green squares, blue triangles."""
    return _folders().colour_shapes(root, per_class, size, seed)


@pytest.fixture
def shapes_folder(tmp_path: Path) -> Path:
    """30 16x16 PNGs in each of three class folders."""
    return draw_shapes(tmp_path / "shapes", 30)


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    from pydoc_data.topics import topics

    root = tmp_path / "texts"
    root.mkdir()
    for name in sorted(topics)[:20]:
        (root / f"{name}.txt").write_text(topics[name], encoding="utf-8")
    return root


# a study of a few short VAE runs on digits: 10 epochs of 10 steps each
SMALL_TUNE = {
    "enabled": True,
    "n_trials": 4,
    "max_steps": 100,
    "startup_trials": 2,
    "warmup_epochs": 1,
    "space": {
        "train.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
        "model.vae.latent_dim": {"type": "int", "low": 4, "high": 16, "step": 4},
        "model.gan.width": {"type": "int", "low": 16, "high": 64},  # another family's: ignored
    },
}
SMALL_MODEL = {"vae": {"arch": "mlp", "hidden": [64], "latent_dim": 8, "prior_components": 0}}
SMALL_TRAIN = {"steps_per_epoch": 10, "val_batches": 2, "sample_every_n_epochs": 0}


def set_space(project, space: dict) -> None:
    """Replace tune.space whole (set_params merges sections)."""
    path = project.root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["tune"]["space"] = space
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def digits_project(digits):
    """A project whose data/processed holds the digits, with a small model and study (tests of tune)."""
    digits.set_params(model=SMALL_MODEL, train=SMALL_TRAIN, tune=SMALL_TUNE)
    set_space(digits, SMALL_TUNE["space"])
    return digits


def read_tune(project, name: str):
    path = project.root / "artifacts/tune" / name
    return yaml.safe_load(path.read_text()) if name.endswith(".yaml") else json.loads(path.read_text())
