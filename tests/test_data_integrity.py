"""Stored data is what its stage wrote: a byte flipped in DVC's cache is refused downstream, a killed
stage's staging folder is cleaned at the next run, and no file name steps out of data/raw/files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from tasks import augment, collect, validate
from tasks.core import datasets, paths
from tasks.core.errors import GenloopError
from tasks.core.storage import pid_alive
from tasks.ingest.sources import put
from tests.conftest import BIN


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_byte_flipped_in_the_dvc_cache_is_refused_after_checkout(project):
    project.run("dvc", "repro", "validate", check=True)
    manifest = json.loads((project.root / "data/raw/manifest.json").read_text())
    victim = manifest["files"][100]
    # DVC keeps a directory's files in its cache by their md5: find this one's object and damage it
    import hashlib

    md5 = hashlib.md5((project.root / "data/raw" / victim["path"]).read_bytes()).hexdigest()
    obj = next((project.root / ".dvc/cache").rglob(md5[2:]))
    flip_a_byte(obj)
    (project.root / "data/raw" / victim["path"]).unlink()
    proc = project.run("dvc", "checkout", "data/raw")
    assert proc.returncode == 0  # DVC restores the damaged copy without a word
    proc = project.run("genloop", "stage", "augment")
    assert proc.returncode == 1
    assert f"data/raw is not what collect wrote: {victim['path']} (changed or missing)" in proc.stderr
    assert not (project.root / "data/processed").exists()  # nothing downstream was written


def test_changed_processed_data_is_refused_by_every_reader(project):
    collect.run(project.params())
    validate.run(project.params())
    augment.run(project.params())
    meta, _ = datasets.load_splits()
    assert set(meta["sha256"]) == {f"{s}_{xy}.npy" for s in datasets.SPLITS for xy in "xy"}
    flip_a_byte(paths.PROCESSED / "train_x.npy")
    with pytest.raises(GenloopError, match=r"train_x\.npy is not what augment wrote"):
        datasets.load_splits()


def test_a_file_added_to_data_raw_is_refused(project):
    collect.run(project.params())
    validate.run(project.params())
    extra = paths.RAW / "files" / "0" / "smuggled.png"
    extra.write_bytes((paths.RAW / json.loads(paths.MANIFEST.read_text())["files"][0]["path"]).read_bytes())
    with pytest.raises(GenloopError, match=r"files/0/smuggled.png \(not in the manifest\)"):
        augment.run(project.params())


def test_a_killed_collect_leaves_staging_that_the_next_run_removes(project):
    proc = subprocess.Popen([str(BIN / "genloop"), "stage", "collect"], cwd=project.root)
    deadline = time.monotonic() + 120
    while not list((project.root / "data").glob(".raw.staging-*/files/*/*")):
        assert proc.poll() is None and time.monotonic() < deadline, "collect ended before it was killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = list((project.root / "data").glob(".raw.staging-*"))
    # through the warm runner the stage ran in a process of its own, killed with the command: gone
    # within moments (the kernel tears down its memory), after which its staging is an orphan
    stage_pid = int(left[0].name.split("-")[1]) if left else proc.pid
    deadline = time.monotonic() + 5
    while pid_alive(stage_pid):
        assert time.monotonic() < deadline, "the stage's process outlived the command"
        time.sleep(0.01)
    assert left and not paths.RAW.exists()  # what a kill leaves; data/raw never half-written
    old_style = project.root / "data" / ".processed.staging-abc123"  # from before pids were in the name
    old_style.mkdir()
    collect.run(project.params())
    assert list((project.root / "data").glob(".raw.staging-*")) == []
    from tasks.core.storage import staged_dir

    with staged_dir(paths.PROCESSED) as stage:
        np.save(stage / "x.npy", np.zeros(1))
    assert not old_style.exists()


@pytest.mark.parametrize("name", ["a/../../x.png", "../x.png", "/etc/x.png", "a/./b.png"])
def test_a_name_that_steps_out_of_files_is_refused(tmp_path, name):
    with pytest.raises(GenloopError, match="steps out of its folder"):
        put(tmp_path, name, b"x", f"s3://bucket/{name}")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
