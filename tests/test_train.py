"""The train stage through the real CLI and DVC: resume after SIGKILL, DDP, init_from, bad params."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasks import augment, collect, validate
from tests.conftest import SMALL_BASELINE

pytestmark = pytest.mark.slow

# train: None, so the test's own train section holds (not the character model's 4,800-step defaults)
TINY_GPT = {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 64, "dropout": 0.1, "train": None}
QUICK = {
    "max_steps": 20,
    "steps_per_epoch": 10,
    "batch_size": 16,
    "val_batches": 2,
    "sample_every_n_epochs": 1,
    "precision": "32-true",  # auto measures, and the tests compare the weights of separate runs
}


def prepare(project, source: str = "sklearn:digits", family: str = "vae", **train) -> None:
    model = {"family": family}
    if family == "gpt":
        model["gpt"] = TINY_GPT
    project.set_params(data={"source": source}, model=model, train=QUICK | train)
    if source == "sklearn:digits" and (project.root / "data/processed").exists():
        return  # the `digits` fixture's: collected, validated and augmented once per worker
    collect.run(project.params())
    validate.run(project.params())
    augment.run(project.params())


def metrics(root: Path) -> dict:
    return json.loads((root / "artifacts/train/metrics.json").read_text())


def weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def test_dvc_repro_trains_exports_and_then_does_nothing(digits):
    project = digits  # the digits prepared (test_pipeline runs the data stages from scratch)
    project.set_params(model={"vae": {"latent_dim": 4, "hidden": [32]}}, train=QUICK, evaluate=SMALL_BASELINE)
    proc = project.run("dvc", "repro", check=True)
    assert "Running stage 'train'" in proc.stdout
    out = project.root / "artifacts/train"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["family"] == "vae" and metrics["epochs"] == 2 and metrics["val_loss"] > 0
    assert {"model.safetensors", "model.json"} <= {p.name for p in (out / "model").iterdir()}
    assert (out / "samples/final.png").is_file() and (out / "samples/epoch_0001.png").is_file()
    assert (out / "live/plots/metrics/val_loss.tsv").is_file() or list(
        (out / "live/plots/metrics").rglob("*.tsv")
    )
    # the training figure on the 8-bit scale of val_loss: positive bits/dim, not the density's nats
    logged = (out / "live/plots/metrics/train/bits_per_dim.tsv").read_text().splitlines()[1:]  # dvclive: a/b
    assert logged and all(0 < float(row.split()[-1]) < 16 for row in logged)
    assert "up to date" in project.run("dvc", "repro", check=True).stdout
    shown = project.run("dvc", "metrics", "show", check=True)
    assert "val_loss" in shown.stdout
    # forced again: DVC clears the outputs but keeps the checkpoints (persist); a finished run is not
    # resumed with nothing left to train, it trains again and writes every output, to the same weights
    before = weights(out / "model")
    project.run("dvc", "repro", "--force", "--single-item", "train", check=True)
    assert json.loads((out / "metrics.json").read_text())["resumed"] is False
    assert (out / "samples/final.png").is_file()
    after = weights(out / "model")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_killed_run_resumes_to_the_same_weights(project, tmp_path):
    # With the weight average on, whose state (the average and its update count) must resume too.
    prepare(project, "pydoc:topics", "gpt", max_steps=150, steps_per_epoch=30, sample_every_n_epochs=0,
            ema_decay=0.9)  # fmt: skip
    twin = tmp_path / "twin"
    shutil.copytree(project.root, twin)

    last = project.root / "artifacts/train/checkpoints/last.ckpt"
    proc = subprocess.Popen(["genloop", "stage", "train"], cwd=project.root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    seen: list[float] = []
    deadline = time.monotonic() + 300
    while len(seen) < 2 and time.monotonic() < deadline and proc.poll() is None:
        if last.is_file() and (not seen or last.stat().st_mtime != seen[-1]):
            seen.append(last.stat().st_mtime)
        time.sleep(0.02)
    time.sleep(0.3)  # into the third epoch
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (project.root / "artifacts/train/model").exists()

    proc = project.run("genloop", "stage", "train", check=True)
    assert metrics(project.root)["resumed"] is True
    said = proc.stdout + proc.stderr  # nothing a user cannot act on
    assert not any(s in said for s in ("exists and is not empty", "Tip:", "Warning", "deprecated")), said

    project.root = twin
    project.run("genloop", "stage", "train", check=True)
    assert metrics(twin)["resumed"] is False
    a, b = weights(tmp_path / "project/artifacts/train/model"), weights(twin / "artifacts/train/model")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)


def test_changed_params_do_not_resume_stale_checkpoints(digits):
    project = digits
    prepare(project, steps_per_execution=4)
    proc = project.run("genloop", "stage", "train", check=True)
    # one bar for the whole run, in optimizer steps (10 an epoch), not Lightning steps (3 of up to 4),
    # with the time left; no bar of validation's own
    bar = proc.stdout + proc.stderr
    assert "train, epoch 2/2: 100%" in bar and "20/20 [" in bar and "3/3" not in bar, bar
    assert "Validation" not in bar and "Sanity" not in bar, bar
    project.set_params(train={"lr": 0.0005})
    project.run("genloop", "stage", "train", check=True)
    assert metrics(project.root)["resumed"] is False


def test_ddp_on_two_cpu_processes(digits):
    project = digits
    # two optimizer steps per Lightning step: each backward must still average gradients over ranks
    # (tasks/training/callbacks.py: ReplicaCheck fails the run if the replicas end apart)
    prepare(project, strategy="ddp", devices=2, accelerator="cpu", steps_per_execution=2)
    proc = project.run("genloop", "stage", "train", check=True)
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    assert metrics(project.root)["epochs"] == 2
    assert (project.root / "artifacts/train/model/model.safetensors").is_file()


def test_init_from_fine_tunes_an_exported_model(project, tmp_path):
    prepare(project, "pydoc:topics", "gpt", max_steps=10)
    project.run("genloop", "stage", "train", check=True)
    base = tmp_path / "pretrained"
    shutil.copytree(project.root / "artifacts/train/model", base)
    project.set_params(train={"init_from": str(base), "lr": 1e-12, "warmup_steps": 0})
    project.run("genloop", "stage", "train", check=True)
    before, after = weights(base), weights(project.root / "artifacts/train/model")
    assert all((before[k] - after[k]).abs().max() < 1e-6 for k in before)  # started from it
    project.set_params(model={"gpt": {"position": "learned"}})  # its weights have no position table
    proc = project.run("genloop", "stage", "train")
    assert proc.returncode == 1 and "model.gpt differs, position: rope there, learned here" in proc.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"family": "diffusion"}}, "model.family"),
        ({"train": {"lr": -0.1}}, "train.lr"),
        ({"train": {"compile": "fastest"}}, "train.compile"),
        ({"model": {"family": "gpt"}}, "models text data, but data/processed (from sklearn:digits) holds"),
        ({"train": {"init_from": "nowhere"}}, "train.init_from: nowhere/model.json not found"),
    ],
)
def test_bad_params_get_a_clear_error(digits, change, message):
    project = digits
    prepare(project)
    project.set_params(**change)
    proc = project.run("genloop", "stage", "train")
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_init_from_another_family_is_refused(digits, tmp_path):
    project = digits
    prepare(project, family="gan")
    project.run("genloop", "stage", "train", check=True)
    gan = tmp_path / "gan-model"
    shutil.copytree(project.root / "artifacts/train/model", gan)
    project.set_params(model={"family": "vae"}, train={"init_from": str(gan)})
    proc = project.run("genloop", "stage", "train")
    assert proc.returncode == 1 and "holds a gan model, not a vae" in proc.stderr


def test_two_machines_through_torchrun_resume_together_and_export_once(digits, tmp_path):
    """`genloop train --nodes 2` in two checkouts (two machines' worth: CPU, gloo, the rendezvous on
    127.0.0.1): one DDP run of world size 2. Both killed with SIGKILL mid-run and launched again, both
    resume from rank 0's step; the replicas end equal (ReplicaCheck) and one machine exports and
    records the stage in dvc.lock."""
    import psutil
    import yaml

    from tests.conftest import BIN, copy_project, free_port

    digits.set_params(
        model={"vae": {"latent_dim": 4, "hidden": [32]}},
        train=QUICK
        | {"max_steps": 160, "steps_per_epoch": 20, "sample_every_n_epochs": 0, "accelerator": "cpu"},
    )
    machines = [digits, copy_project(digits.root, tmp_path / "second")]
    port = free_port()

    def launch(part: int) -> list[subprocess.Popen]:
        cmd = [
            str(BIN / "genloop"),
            "train",
            "--nodes",
            "2",
            "--rdzv",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            f"t{part}",
        ]
        procs = []
        for i, m in enumerate(machines):
            with open(tmp_path / f"{i}-{part}.log", "w") as log:
                env = {**os.environ, **m.env}
                procs.append(subprocess.Popen(cmd, cwd=m.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))  # fmt: skip
        return procs

    first = launch(1)
    deadline = time.monotonic() + 300
    while not any((m.root / "artifacts/train/checkpoints/last.ckpt").is_file() for m in machines):
        assert time.monotonic() < deadline and all(p.poll() is None for p in first), "no checkpoint"
        time.sleep(0.2)
    time.sleep(1)
    for proc in first:  # the launcher, torchrun and its ranks
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    second = launch(2)
    assert [p.wait(timeout=600) for p in second] == [0, 0], [
        (tmp_path / f"{i}-2.log").read_text()[-3000:] for i in (0, 1)
    ]
    logs = [(tmp_path / f"{i}-2.log").read_text() for i in (0, 1)]
    steps = [re.search(r"rank \d of world size 2: resuming from step (\d+)", log) for log in logs]
    assert all(steps), logs
    assert steps[0][1] == steps[1][1] and int(steps[0][1]) > 0  # both from rank 0's checkpoint
    exported = [m for m, log in zip(machines, logs, strict=True) if "this machine exported" in log]
    assert len(exported) == 1, logs  # the model exported once
    (owner,) = exported
    assert metrics(owner.root)["resumed"] is True
    assert "train" in yaml.safe_load((owner.root / "dvc.lock").read_text())["stages"]
    assert owner.run("dvc", "status", "train").stdout.strip().endswith("up to date.")
