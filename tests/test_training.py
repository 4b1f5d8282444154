"""The training loop around a family (tasks/training/): losses fall, grouping optimizer steps changes
no weight, weight averaging, the DDP replica check, and runs that leave the global generator alone."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from tasks.training.data import DeviceData
from tasks.training.module import Optim, Trainee
from tests.test_models import SMALL, TEXT, TEXT_DATA, make


def images(n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Three easy classes: a bright row, column or diagonal on a dark 8x8 canvas."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = np.zeros((n, 1, 8, 8), np.uint8)
    for i, label in enumerate(y):
        k = rng.integers(1, 7)
        if label == 0:
            x[i, 0, k, :] = 255
        elif label == 1:
            x[i, 0, :, k] = 255
        else:
            x[i, 0] = np.eye(8, dtype=np.uint8) * 255
    return x, y.astype(np.int64)


def splits(family: str) -> dict:
    if family == "gpt":
        ids = np.array([TEXT_DATA["vocab"].index(c) for c in TEXT], np.uint16)
        return {"train": (ids, None), "val": (ids[:400], None)}
    x, y = images()
    return {"train": (x, y), "val": (x[:32], y[:32])}


def trainee(family: str, lr: float = 3e-3, **changes) -> Trainee:
    optim = Optim(lr=lr, weight_decay=0.0, warmup_steps=0, schedule="cosine", grad_clip=0.0, seed=0)
    model = make(family, **changes)
    return Trainee(model, optim)


def data_for(family: str, **kwargs) -> DeviceData:
    return DeviceData(
        "text" if family == "gpt" else "image", splits(family), seed=0, block_size=SMALL["gpt"]["block_size"],
        **{"batch_size": 32} | kwargs,
    )  # fmt: skip


def heldout(model, family: str) -> float:
    data = data_for(family)
    data.setup()
    model.eval()
    with torch.no_grad():
        losses = [model.heldout_loss(data.batch("val", k)) for k in data.val_keys()]
    model.train()
    return float(torch.stack(losses).mean())


def lightning(epochs: int = 2, callbacks: tuple = ()) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks))  # fmt: skip


ROPE = pytest.param("gpt", {"position": "rope"}, id="gpt-rope")


@pytest.mark.parametrize(("family", "config"), [("vae", {}), ("gpt", {}), ROPE, ("gan", {})])
def test_a_few_steps_lower_the_heldout_loss(family, config):
    torch.manual_seed(0)
    module = trainee(family, **config)
    before = heldout(module.model, family)
    lightning().fit(module, datamodule=data_for(family, steps_per_epoch=25))
    after = heldout(module.model, family)
    # VAE: bits/dim, an offset scale (8 bits is a uniform guess): ask for half a bit per pixel gained
    target = {"vae": before - 0.5, "gpt": before * 0.9, "gan": before}[family]
    assert after < target, (before, after)


def fit_quickly(family: str, steps_per_execution: int, callbacks: tuple = ()):
    """Two short epochs through Lightning, clipping on; returns the model and its optimizer-step count."""
    torch.manual_seed(0)
    module = trainee(family)
    module.optim.grad_clip, module.optim.warmup_steps = 0.5, 3
    data = data_for(family, batch_size=16, steps_per_epoch=10, steps_per_execution=steps_per_execution)
    trainer = lightning(2, callbacks)
    trainer.fit(module, datamodule=data)
    return module.model, module.steps_done


@pytest.mark.parametrize("family", ["vae", "gan", "gpt"])
def test_steps_per_execution_changes_speed_not_results(family):
    """Grouping optimizer steps into Lightning steps (3 does not divide an epoch's 10) must not change a
    single update: batches, noise and the learning-rate schedule follow the optimizer step."""
    one, steps_one = fit_quickly(family, 1)
    grouped, steps_grouped = fit_quickly(family, 3)
    assert steps_one == steps_grouped == 2 * 10
    a, b = one.net.state_dict(), grouped.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    assert not all(torch.equal(a[k], make(family).net.state_dict()[k]) for k in a)  # it did train


def test_a_run_leaves_the_callers_generator_alone(tmp_path):
    """fit (GPT with dropout, which draws from torch's global generator) leaves that generator as it
    found it: runs side by side in one process, such as tuning trials, do not disturb each other."""
    import json

    import yaml

    from tasks.core.params import parse
    from tasks.training.fit import fit
    from tests.conftest import REPO

    ids = np.array([TEXT_DATA["vocab"].index(c) for c in TEXT], np.uint16)
    for split in ("train", "val"):
        np.save(tmp_path / f"{split}.npy", ids)
    (tmp_path / "meta.json").write_text(json.dumps({"kind": "text", "vocab": TEXT_DATA["vocab"]}))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    gpt = raw["model"]["gpt"] | SMALL["gpt"] | {"dropout": 0.2, "train": None}  # these 3 steps, not its own
    raw["model"] |= {"family": "gpt", "gpt": gpt}
    raw["train"] |= {"max_steps": 3, "steps_per_epoch": 3, "val_batches": 1, "sample_every_n_epochs": 0}
    p = parse(raw)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(p.model, p.train, processed=tmp_path, out=tmp_path / "out", live_metrics=False, progress=False)
    assert torch.equal(torch.rand(3), expected)
    assert (tmp_path / "out/model/training.json").is_file()


def test_ddp_replicas_that_drift_apart_fail_the_run():
    from types import SimpleNamespace

    from tasks.core.errors import GenloopError
    from tasks.training.callbacks import ReplicaCheck

    module = trainee("vae")
    same = lambda t: torch.stack([t, t])  # noqa: E731  what all_gather returns on 2 ranks
    module.all_gather = same
    ReplicaCheck().on_train_end(SimpleNamespace(world_size=2), module)  # in step: fine
    module.all_gather = lambda t: torch.stack([t, t + 1e-3])
    with pytest.raises(GenloopError, match="replicas ended with different weights"):
        ReplicaCheck().on_train_end(SimpleNamespace(world_size=2), module)


def test_ema_decay_warms_up_then_holds():
    from tasks.training.averaging import ema_with_warmup

    update = ema_with_warmup(0.99)
    for n, decay in ((1, 2 / 11), (50, 51 / 60), (1000, 0.99)):  # min(0.99, (1 + n) / (10 + n))
        averaged, current = [torch.zeros(3)], [torch.ones(3)]
        update(averaged, current, torch.tensor(n))
        assert torch.allclose(averaged[0], torch.full((3,), 1 - decay))
    counters = [torch.tensor([3])]
    update(counters, [torch.tensor([7])], torch.tensor(5))  # integer buffers are copied, not averaged
    assert counters[0].item() == 7


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_weight_ema_exports_the_average_of_every_update(steps_per_execution):
    """train.ema_decay through Lightning: the final weights are the EMA of the weights after each update
    (one per Lightning step), with the decay per update raised to the optimizer steps it spans."""
    from tasks.training.averaging import WeightEMA

    seen: list[dict] = []

    class Record(pl.Callback):  # runs before the average's own update (callbacks keep their order)
        def on_train_batch_end(self, trainer, module, *args) -> None:
            seen.append({k: v.detach().clone() for k, v in module.model.net.state_dict().items()})

    decay = 0.1  # below the warm-up's (1 + n) / (10 + n) from the first update: the power is what counts
    model, _ = fit_quickly("gpt", steps_per_execution, (Record(), WeightEMA(decay, steps_per_execution)))
    assert len(seen) == -(-10 // steps_per_execution) * 2
    expected = dict(seen[0])
    for weights in seen[1:]:
        d = decay**steps_per_execution
        expected = {k: d * expected[k] + (1 - d) * weights[k] for k in expected}
    final = model.net.state_dict()
    assert all(torch.allclose(final[k], expected[k], rtol=0, atol=1e-6) for k in final)  # float32 lerp
    if steps_per_execution == 1:
        assert not all(torch.allclose(final[k], seen[-1][k], rtol=0, atol=1e-5) for k in final)


def test_the_budget_follows_the_dataset_size_and_is_whole_epochs_of_steps():
    """`max_steps: auto` gives every training image about as many passes (AUTO_PASSES) within a floor and
    a cap: the 1,437 training digits get the cap, a 240-image folder the floor, one in between its
    passes; an epoch is one pass but at least 50 steps (a small folder does not validate every few
    steps), and an explicit budget wins."""
    from tasks.core.params import load
    from tasks.training.fit import AUTO_MAX_STEPS, AUTO_MIN_STEPS, AUTO_PASSES, budget, steps_per_epoch
    from tests.conftest import REPO

    train = load(REPO / "params.yaml").train
    assert train.max_steps == "auto"
    assert budget(train, 1437) == AUTO_MAX_STEPS and budget(train, 240) == AUTO_MIN_STEPS
    between = AUTO_MIN_STEPS * train.batch_size // AUTO_PASSES + 320
    assert (
        AUTO_MIN_STEPS < budget(train, between) == AUTO_PASSES * between // train.batch_size < AUTO_MAX_STEPS
    )
    assert budget(train.model_copy(update={"max_steps": 123}), 1437) == 123
    digits, folder = steps_per_epoch("image", 4311, train), steps_per_epoch("image", 720, train)
    assert (digits, folder) == (67, 50) and steps_per_epoch("text", 372_038, train) == 100
    fixed = train.model_copy(update={"steps_per_epoch": 30})
    assert steps_per_epoch("image", 720, fixed) == steps_per_epoch("text", 10, fixed) == 30


def test_precision_auto_measures_bf16_on_a_cpu_that_has_it(monkeypatch, capsys):
    """auto: on a CPU with native bf16, a few steps of the model in each precision decide, bf16 wins
    only when clearly faster, and the run that follows starts from the random state and gradients it
    would have had."""
    from types import SimpleNamespace

    from tasks.training import fit

    train = SimpleNamespace(precision="auto", accelerator="cpu")
    model, data = make("gpt"), data_for("gpt", steps_per_epoch=5)
    monkeypatch.setattr(fit, "native_bf16", lambda: False)  # emulated bf16 is slower: nothing measured
    assert fit.resolve_precision(train, model, data) == "32-true" and capsys.readouterr().out == ""
    seen = {}
    real = fit.measure_bf16

    def measured(*args):
        seen["times"] = real(*args)
        return seen["times"]

    monkeypatch.setattr(fit, "native_bf16", lambda: True)
    monkeypatch.setattr(fit, "measure_bf16", measured)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    chosen = fit.resolve_precision(train, model, data)
    fp32, bf16 = seen["times"]
    assert chosen == ("bf16-mixed" if bf16 * fit.BF16_MIN_SPEEDUP <= fp32 else "32-true")
    assert f"precision auto: {chosen}" in capsys.readouterr().out
    assert torch.equal(torch.rand(3), expected)
    assert all(p.grad is None for p in model.parameters()) and data.dev == {}
    monkeypatch.setattr(fit, "measure_bf16", lambda *a: (0.2, 0.1))
    assert fit.resolve_precision(train, model, data) == "bf16-mixed"
    monkeypatch.setattr(fit, "measure_bf16", lambda *a: (0.11, 0.1))  # within the noise: float32,
    assert fit.resolve_precision(train, model, data) == "32-true"  # so that runs repeat
    gan = make("gan")  # two losses: float32, nothing measured
    assert fit.resolve_precision(train, gan, data_for("gan", steps_per_epoch=5)) == "32-true"


class Plateau(pl.LightningModule):
    """A model whose validation loss never improves on its first epoch's."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, _):
        return (self.w - batch[0]).pow(2).mean()

    def validation_step(self, batch, _):
        self.log("val_loss", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_is_the_last_epoch_even_on_a_plateau(tmp_path):
    """A killed run resumes from last.ckpt: it must be the last epoch's, not the best epoch's."""
    from tasks.training.fit import checkpointing

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 1)), batch_size=4)
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=list(checkpointing(tmp_path)))  # fmt: skip
    trainer.fit(Plateau(), loader, loader)
    epoch = {n: torch.load(tmp_path / f"{n}.ckpt", weights_only=True)["epoch"] for n in ("best", "last")}
    assert epoch == {"best": 0, "last": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
