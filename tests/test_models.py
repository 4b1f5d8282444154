"""Model families: loss falls, seeded sampling is deterministic, safetensors round trip, bad configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from models.common import DeviceData

IMAGE_DATA = {"kind": "image", "shape": [1, 8, 8], "classes": ["0", "1", "2"]}
TEXT = "the quick brown fox jumps over the lazy dog. " * 40
TEXT_DATA = {"kind": "text", "vocab": sorted(set(TEXT))}
SMALL = {
    "vae": {"latent_dim": 4, "hidden": [32]},
    "gan": {"latent_dim": 8, "width": 16, "d_steps": 1},
    "gpt": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.0},
}


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


def make(family: str, **config):
    data = TEXT_DATA if family == "gpt" else IMAGE_DATA
    model = models.build(family, SMALL[family] | config, data)
    model.optim.lr = 3e-3
    return model


def splits(family: str) -> dict:
    if family == "gpt":
        ids = np.array([TEXT_DATA["vocab"].index(c) for c in TEXT], np.uint16)
        return {"train": (ids, None), "val": (ids[:400], None)}
    x, y = images()
    return {"train": (x, y), "val": (x[:32], y[:32])}


def heldout(model, family: str) -> float:
    data = DeviceData(
        model.data["kind"], splits(family), batch_size=32, seed=0, block_size=SMALL["gpt"]["block_size"]
    )
    data.setup()
    model.eval()
    with torch.no_grad():
        losses = [model.heldout_loss(data.batch("val", k)) for k in data.val_keys()]
    model.train()
    return float(torch.stack(losses).mean())


ROPE = pytest.param("gpt", {"position": "rope"}, id="gpt-rope")


@pytest.mark.parametrize(("family", "config"), [("vae", {}), ("gpt", {}), ROPE, ("gan", {})])
def test_a_few_steps_lower_the_heldout_loss(family, config):
    import pytorch_lightning as pl

    torch.manual_seed(0)
    model = make(family, **config)
    before = heldout(model, family)
    data = DeviceData(model.data["kind"], splits(family), batch_size=32, seed=0, steps_per_epoch=25,
                      block_size=SMALL["gpt"]["block_size"])  # fmt: skip
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    trainer.fit(model, datamodule=data)
    after = heldout(model, family)
    # VAE: bits/dim, an offset scale (8 bits is a uniform guess): ask for half a bit per pixel gained
    target = {"vae": before - 0.5, "gpt": before * 0.9, "gan": before}[family]
    assert after < target, (before, after)


@pytest.mark.parametrize("family", ["vae", "gan", "gpt"])
def test_sampling_is_deterministic_under_a_seed(family):
    model = make(family).eval()
    kwargs = {"length": 20} if family == "gpt" else {}
    a, b = model.sample(4, seed=7, **kwargs), model.sample(4, seed=7, **kwargs)
    c = model.sample(4, seed=8, **kwargs)
    if family == "gpt":
        assert a == b and a != c and all(len(t) == 21 for t in a)
    else:
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert a.shape == (4, 1, 8, 8) and a.min() >= 0 and a.max() <= 1


def test_class_and_prompt_conditions():
    vae = make("vae").eval()
    assert vae.sample(3, condition=2, seed=0).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="class ids"):
        vae.sample(2, condition=5)
    gpt = make("gpt").eval()
    assert gpt.sample(2, condition="the ", seed=0, length=5)[0].startswith("the ")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gpt.sample(1, condition="ZZ")


@pytest.mark.parametrize("family", ["vae", "gan", "gpt"])
def test_safetensors_round_trip(family, tmp_path):
    model = make(family).eval()
    models.save(model, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes()[:8] != b"\x80\x04"  # not a pickle
    loaded = models.load(tmp_path)
    for (k, v), (k2, v2) in zip(model.net.state_dict().items(), loaded.net.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    kwargs = {"length": 10} if family == "gpt" else {}
    first, second = model.sample(2, seed=3, **kwargs), loaded.sample(2, seed=3, **kwargs)
    assert first == second if family == "gpt" else torch.equal(first, second)


def test_unknown_family_and_config_keys():
    with pytest.raises(ValueError, match="unknown model family"):
        models.build("diffusion", {}, IMAGE_DATA)
    with pytest.raises(ValueError, match="unknown vae config keys: depth"):
        models.build("vae", {"depth": 3}, IMAGE_DATA)


def test_gpt_bits_per_char_scores_every_character_once():
    model = make("gpt").eval()
    ids = torch.tensor([TEXT_DATA["vocab"].index(c) for c in TEXT[:200]])
    bpc = model.bits_per_char(ids)
    assert 0 < bpc < 2 * np.log2(len(TEXT_DATA["vocab"]))  # near uniform when untrained


@pytest.mark.parametrize("family", ["vae", "gan", "gpt"])
def test_a_batch_of_requests_gives_what_each_request_alone_gives(family):
    """What the server's adaptive batching relies on: a request's samples do not depend on the others."""
    model = make(family).eval()
    if family == "gpt":
        jobs = [
            {"n": 2, "condition": "the ", "seed": 1, "length": 12, "temperature": 0.8},
            {"n": 1, "condition": "fox", "seed": 2, "length": 5, "temperature": 0.0},
            {"n": 1, "condition": "dog ", "seed": 3, "length": 7, "top_k": 3},
        ]
    else:
        jobs = [{"n": 2, "condition": 1, "seed": 1}, {"n": 3, "condition": None, "seed": 2}]
    together = model.sample_batch(jobs)
    for job, got in zip(jobs, together, strict=True):
        alone = model.sample_batch([job])[0]
        if family == "gpt":
            assert (
                got == alone and len(got) == job["n"] and len(got[0]) == len(job["condition"]) + job["length"]
            )
        else:
            assert torch.allclose(got, alone, atol=1e-6) and len(got) == job["n"]


def fit_quickly(family: str, steps_per_execution: int, callbacks: tuple = ()):
    """Two short epochs through Lightning, clipping on; returns the model and its optimizer-step count."""
    import pytorch_lightning as pl

    pl.seed_everything(0, verbose=False)
    model = make(family)
    model.optim.grad_clip, model.optim.warmup_steps = 0.5, 3
    block = SMALL["gpt"]["block_size"]
    data = DeviceData(model.data["kind"], splits(family), batch_size=16, seed=0, steps_per_epoch=10,
                      block_size=block, steps_per_execution=steps_per_execution)  # fmt: skip
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks))  # fmt: skip
    trainer.fit(model, datamodule=data)
    return model, trainer.global_step


@pytest.mark.parametrize("family", ["vae", "gan", "gpt"])
def test_steps_per_execution_changes_speed_not_results(family):
    """Grouping optimizer steps into Lightning steps (3 does not divide an epoch's 10) must not change a
    single update: batches, noise and the learning-rate schedule follow the optimizer step."""
    one, steps_one = fit_quickly(family, 1)
    grouped, steps_grouped = fit_quickly(family, 3)
    updates_per_step = SMALL["gan"]["d_steps"] + 1 if family == "gan" else 1
    assert steps_one == steps_grouped == 2 * 10 * updates_per_step
    a, b = one.net.state_dict(), grouped.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], make(family).net.state_dict()[k]) for k in a)  # it did train


def test_ddp_replicas_that_drift_apart_fail_the_run():
    from types import SimpleNamespace

    from tasks.errors import GenloopError
    from tasks.trainer import ReplicaCheck

    model = make("vae")
    same = lambda t: torch.stack([t, t])  # noqa: E731  what all_gather returns on 2 ranks
    model.all_gather = same
    ReplicaCheck().on_train_end(SimpleNamespace(world_size=2), model)  # in step: fine
    model.all_gather = lambda t: torch.stack([t, t + 1e-3])
    with pytest.raises(GenloopError, match="replicas ended with different weights"):
        ReplicaCheck().on_train_end(SimpleNamespace(world_size=2), model)


def test_ema_decay_warms_up_then_holds():
    from tasks.averaging import ema_with_warmup

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
    import pytorch_lightning as pl

    from tasks.averaging import WeightEMA

    seen: list[dict] = []

    class Record(pl.Callback):  # runs before the average's own update (callbacks keep their order)
        def on_train_batch_end(self, trainer, module, *args) -> None:
            seen.append({k: v.detach().clone() for k, v in module.net.state_dict().items()})

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


def test_rotary_attention_scores_depend_only_on_relative_position():
    from models.gpt import rotary_tables, rotate

    T, hs = 12, 8
    cos, sin = rotary_tables(T, hs)
    q, k = torch.randn(hs), torch.randn(hs)
    qs = rotate(q.expand(1, 1, T, hs), cos, sin)[0, 0]  # the same query and key at every position
    ks = rotate(k.expand(1, 1, T, hs), cos, sin)[0, 0]
    scores = qs @ ks.T  # scores[m, n]: query at position m, key at position n
    assert torch.allclose(scores[1:, 1:], scores[:-1, :-1], atol=1e-5)  # a shift of both changes nothing
    assert not torch.allclose(scores[0, 0], scores[5, 0], atol=1e-3)  # but the distance does matter
    assert torch.allclose(qs.norm(dim=-1), q.norm().expand(T), atol=1e-5)  # a rotation: lengths kept


def test_rope_gpt_round_trips_without_exporting_its_tables(tmp_path):
    from safetensors.torch import load_file

    model = make("gpt", position="rope").eval()
    models.save(model, tmp_path)
    exported = load_file(tmp_path / "model.safetensors")
    assert not any("rope" in key or "wpe" in key for key in exported)  # rebuilt from the config
    loaded = models.load(tmp_path)
    assert loaded.cfg.position == "rope"
    assert model.sample(2, seed=3, length=10) == loaded.sample(2, seed=3, length=10)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # q, k rotated in fp32, then back
        assert model.net(torch.zeros(2, 16, dtype=torch.long)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="position must be learned or rope"):
        make("gpt", position="alibi")


def test_bf16_residual_stream_only_under_autocast():
    """fp32_residual: false keeps the stream between blocks in autocast's dtype; without autocast (CPU
    training, serving) the model computes exactly what it computes with the flag on."""
    seen: list[torch.dtype] = []
    ids = torch.tensor([[TEXT_DATA["vocab"].index(c) for c in TEXT[:16]]])
    logits = {}
    for fp32 in (True, False):
        torch.manual_seed(0)
        model = make("gpt", fp32_residual=fp32).eval()
        hook = model.net.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
        with torch.no_grad():
            logits[fp32] = model.net(ids)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model.net(ids)
        hook.remove()
    assert seen == [torch.float32, torch.float32, torch.float32, torch.bfloat16]
    assert torch.equal(logits[True], logits[False])
