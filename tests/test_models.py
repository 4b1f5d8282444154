"""Model families: seeded sampling, safetensors round trip, configs, the registry's facts, rotary
positions. How they are trained is tests/test_training.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml

import models
from models import export
from tests.conftest import REPO

IMAGE_DATA = {"kind": "image", "shape": [1, 8, 8], "classes": ["0", "1", "2"]}
TEXT = "the quick brown fox jumps over the lazy dog. " * 40
TEXT_DATA = {"kind": "text", "vocab": sorted(set(TEXT))}
# params.yaml's model sections (the one place their values live), shrunk for tests
DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())["model"]
SMALL = {
    "vae": {"latent_dim": 4, "hidden": [32], "channels": [8, 16]},
    "gan": {"latent_dim": 8, "width": 16, "d_steps": 1},
    "gpt": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.0},
}


def config(family: str, **changes) -> dict:
    model = {k: v for k, v in DEFAULTS[family].items() if k != "train"}  # (the family's training settings)
    return model | SMALL[family] | changes


def make(family: str, **changes):
    return export.build(family, config(family, **changes), TEXT_DATA if family == "gpt" else IMAGE_DATA)


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
    export.save(model, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes()[:8] != b"\x80\x04"  # not a pickle
    loaded = export.load(tmp_path)
    for (k, v), (k2, v2) in zip(model.net.state_dict().items(), loaded.net.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    kwargs = {"length": 10} if family == "gpt" else {}
    first, second = model.sample(2, seed=3, **kwargs), loaded.sample(2, seed=3, **kwargs)
    assert first == second if family == "gpt" else torch.equal(first, second)


def test_unknown_family_and_config_keys():
    with pytest.raises(ValueError, match="unknown model family"):
        export.build("diffusion", {}, IMAGE_DATA)
    with pytest.raises(ValueError, match="unknown vae config keys: depth"):
        export.build("vae", config("vae", depth=3), IMAGE_DATA)
    with pytest.raises(ValueError, match="vae config lacks: beta"):
        export.build("vae", {k: v for k, v in config("vae").items() if k != "beta"}, IMAGE_DATA)


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
    export.save(model, tmp_path)
    exported = load_file(tmp_path / "model.safetensors")
    assert not any("rope" in key or "wpe" in key for key in exported)  # rebuilt from the config
    loaded = export.load(tmp_path)
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


def test_every_registered_family_provides_its_facts():
    """What evaluate, the card, status and the service need of a family, for every registered one."""
    from tasks.quality.metrics import UNITS

    assert set(models.FAMILIES) >= {"vae", "gan", "gpt"}
    for name, family in models.FAMILIES.items():
        assert family.name == name and family.kind in ("image", "text")
        assert family.headline in UNITS and family.heldout_unit and family.intended_use and family.limitations
        assert family.baseline in ("gaussian_mixture", "char_ngram")
        assert family.sample_metrics and set(family.sample_metrics) <= set(UNITS)
        assert family.pictures and set(family.pictures) <= {"grid", "interpolation", "text"}
        assert dataclasses.is_dataclass(family.config) and family.config_keys()
        for field in dataclasses.fields(family.config):  # params.yaml holds every value; a default of
            # None only lets a model exported before its key load as it was trained
            assert (
                field.default in (dataclasses.MISSING, None) and field.default_factory is dataclasses.MISSING
            )
        section = config(name) | {k: DEFAULTS[name][k] for k in SMALL[name]}  # params.yaml's, all of it
        assert set(section) == set(family.config_keys()), name  # params.yaml has every key
        assert set(DEFAULTS[name]) - set(section) <= {"train"}  # and beside them its training settings
        model = export.build(name, section, TEXT_DATA if family.kind == "text" else IMAGE_DATA)
        given = {k: v for k, v in section.items() if v != "auto"}  # auto: sized from the data
        assert model.family == name and {k: model.config[k] for k in given} == given
        assert "auto" not in model.config.values() and set(model.config) == set(section)
        assert ("interpolation" in family.pictures) == hasattr(model, "interpolate")
    assert models.for_kind("text") == ["gpt"] and set(models.for_kind("image")) == {"vae", "gan"}


def test_exports_from_before_a_config_key_existed_load_as_they_were(tmp_path):
    """A GPT exported before `position` and `fp32_residual` existed meant learned positions in fp32."""
    import json

    model = make("gpt", position="learned").eval()
    export.save(model, tmp_path)
    description = json.loads((tmp_path / "model.json").read_text())
    for key in ("position", "fp32_residual"):
        del description["config"][key]
    (tmp_path / "model.json").write_text(json.dumps(description))
    loaded = export.load(tmp_path)
    assert loaded.cfg.position == "learned" and loaded.cfg.fp32_residual is True
    assert model.sample(1, seed=1, length=8) == loaded.sample(1, seed=1, length=8)


@pytest.mark.parametrize(
    ("family", "added"), [("vae", {"arch": "mlp"}), ("gan", {"diff_augment": []})], ids=["vae", "gan"]
)
def test_image_exports_from_before_a_config_key_existed_load_as_they_were(family, added, tmp_path):
    """A VAE exported before `arch` and `channels` existed was an MLP; a GAN before `diff_augment`
    trained without it. Their weights load into the same modules and sample the same."""
    import json

    model = make(family, **added).eval()
    export.save(model, tmp_path)
    description = json.loads((tmp_path / "model.json").read_text())
    for key in ("arch", "channels") if family == "vae" else ("diff_augment",):
        del description["config"][key]
    (tmp_path / "model.json").write_text(json.dumps(description))
    loaded = export.load(tmp_path)
    assert all(getattr(loaded.cfg, key) == value for key, value in added.items())
    assert torch.equal(model.sample(4, seed=3), loaded.sample(4, seed=3))


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_vae_prior_is_the_mixture_torch_distributions_defines(covariance):
    """log p(z | class) of the learned prior equals torch.distributions' mixture of Gaussians with the
    same parameters, and its samples follow it (their mean and covariance are the mixture's)."""
    from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

    model = make("vae", prior_components=3, prior_covariance=covariance)
    prior = model.net.prior
    with torch.no_grad():  # move away from the initial state: correlated, unequal components
        prior.log_scales.normal_(0, 0.3)
        prior.logits.normal_(0, 1)
        if prior.lower is not None:
            prior.lower.normal_(0, 0.5)
    y = torch.tensor([0, 1, 2, 1])
    z = torch.randn(5, 4, model.cfg.latent_dim)  # (importance samples, batch, latent)
    with torch.no_grad():
        tril = prior.scale_tril(y)
        reference = MixtureSameFamily(
            Categorical(logits=prior.logits[y]), MultivariateNormal(prior.means[y], scale_tril=tril)
        )
        assert torch.allclose(prior.log_prob(z, y), reference.log_prob(z), atol=1e-4)
        draws = prior.sample(torch.full((20000,), 1), torch.Generator().manual_seed(0))
    with torch.no_grad():
        w, m, tril = torch.softmax(prior.logits[1], -1), prior.means[1], prior.scale_tril(y[1:2])[0]
        mean = (w[:, None] * m).sum(0)
        second = (w[:, None, None] * (tril @ tril.mT + m[:, :, None] * m[:, None, :])).sum(0)
    assert torch.allclose(draws.mean(0), mean, atol=0.1)
    assert torch.allclose(draws.T.cov(), second - mean[:, None] * mean[None, :], atol=0.15)
    assert (prior.lower is None) == (covariance == "diag")


def test_diff_augment_translates_and_cuts_out_differentiably():
    """DiffAugment's translation moves each image by at most 1/8 of a side, filling black; its cutout
    blacks out at most a square of half the side; gradients reach every pixel that stays visible."""
    from models.gan import diff_augment

    x = torch.rand(64, 1, 8, 8) * 0.9 + 0.1  # no black pixel of its own
    g = torch.Generator().manual_seed(0)
    moved = diff_augment(x, ["translation"], g)
    shifts = set()
    for a, b in zip(x, moved, strict=True):
        found = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(torch.roll(a, (dy, dx), (1, 2))[b > 0], b[b > 0])
        ]
        assert found, "every image is its original moved by at most one pixel"
        shifts.add(found[0])
    assert len(shifts) > 3  # the shifts vary across the batch
    x.requires_grad_(True)
    cut = diff_augment(x, ["cutout"], g)
    black = (cut == 0).sum((1, 2, 3))
    assert black.max() <= 16 and black.min() >= 4 and torch.equal(cut[cut > 0], x[cut > 0])
    cut.sum().backward()
    assert torch.equal(x.grad > 0, cut > 0)


@pytest.mark.parametrize("arch", ["conv", "mlp"])
@pytest.mark.parametrize("shape", [[1, 8, 8], [3, 10, 14]])
def test_vae_architectures_take_any_image_size(arch, shape):
    """The convolutional VAE pads sides that are not multiples of 4 and crops its output back: the
    likelihood covers exactly the image's pixels, and samples have the image's shape."""
    data = {"kind": "image", "shape": shape, "classes": ["a", "b"]}
    model = export.build("vae", config("vae", arch=arch), data)
    x, y = torch.rand(3, *shape), torch.tensor([0, 1, 0])
    out = model.net.decode(torch.zeros(3, 4), model.net.onehot(y, 3, "cpu"))
    assert out.shape == (3, 2 * int(np.prod(shape)))
    loss = model.training_loss((x, y), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and model.nll(x, y, k=4).shape == (3,)
    images = model.sample(5, seed=0)
    assert images.shape == (5, *shape) and images.min() >= 0 and images.max() <= 1


def test_vae_samples_are_drawn_from_the_decoder_not_its_means():
    """A VAE sample is z from the prior, then pixels from the decoder's Gaussians: with the decoder's
    scales set large, samples spread around the means; set tiny, they are the means."""
    model = make("vae")
    last = model.net.decoder.body[-1]  # the conv decoder's output layer: means, then log scales
    with torch.no_grad():
        last.bias[1:].fill_(2.0)  # log scale 2: wide
    wide = model.sample(64, seed=0)
    with torch.no_grad():
        last.bias[1:].fill_(-20.0)  # clamped to -9: a scale of 1e-4
        last.weight[1:].zero_()
    narrow = model.sample(64, seed=0)
    y = torch.arange(64) % 3
    means, _ = model.net.pixel_gaussians(
        model.net.decode(
            model.draw_z(y, 64, torch.Generator().manual_seed(0)), model.net.onehot(y, 64, "cpu")
        )
    )
    assert torch.allclose(narrow.flatten(1), means, atol=1e-3)
    assert (wide.flatten(1) - means).abs().mean() > 0.2


def test_a_gpt_exported_before_attn_dropout_loads_with_its_dropout(tmp_path):
    older = config("gpt", dropout=0.3)
    del older["attn_dropout"]  # what models exported before the key hold
    model = export.build("gpt", older, TEXT_DATA)
    assert model.net.blocks[0].attn.attn_dropout == 0.3
    assert make("gpt", dropout=0.3, attn_dropout=0.0).net.blocks[0].attn.attn_dropout == 0.0


def test_cpu_attention_and_dropout_match_the_fused_kernels():
    """The CPU paths of models/gpt.py (matmul attention in bf16, dropout from 16-bit draws) compute what
    F.scaled_dot_product_attention and F.dropout do."""
    import torch.nn.functional as F

    from models.gpt import attend, dropout

    q, k, v = (torch.randn(2, 4, 100, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
    fused = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ours = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.0).float()
    assert (ours - fused).abs().max() < 0.05  # bf16 inputs: about 3 significant digits
    x = torch.ones(1000, 1000)
    y = dropout(x, 0.2)
    assert abs((y == 0).float().mean().item() - 0.2) < 0.005 and abs(y.mean().item() - 1.0) < 0.01
    torch.manual_seed(0)
    a = dropout(x, 0.5)
    torch.manual_seed(0)
    assert torch.equal(a, dropout(x, 0.5))  # from torch's generator: seeded runs repeat


@pytest.mark.parametrize("family", ["vae", "gan"])
@pytest.mark.parametrize("shape", [[1, 16, 16], [1, 28, 28], [3, 32, 32], [1, 64, 64], [3, 64, 64]])
def test_image_families_size_themselves_from_the_images(family, shape, tmp_path):
    """With `auto` (params.yaml's default), the stride-2 stages bring the smaller side to about 4
    pixels, and the VAE's widths and latent size follow the image: no hand edit for 16x16 or 64x64,
    grey or colour. The export records the sizes chosen, so it loads as it was built."""
    import json

    from models import shaping

    data = {"kind": "image", "shape": shape, "classes": ["a", "b"]}
    auto = {"channels": "auto", "latent_dim": "auto"} if family == "vae" else {"stages": "auto"}
    model = export.build(family, {k: v for k, v in DEFAULTS[family].items() if k != "train"} | auto, data)
    stages = {16: 2, 28: 3, 32: 3, 64: 4}[shape[1]]
    if family == "vae":
        assert len(model.cfg.channels) == stages and model.cfg.channels[:2] == [32, 64]
        assert model.cfg.latent_dim == shaping.latent_dim(tuple(shape)) and 32 <= model.cfg.latent_dim <= 128
        assert model.cfg.latent_dim > 32 or shape == [1, 16, 16]  # more values, a larger code
        assert model.net.decoder.start[1:] == (4, 4)  # the smallest feature map, whatever the size
        loss = model.training_loss((torch.rand(2, *shape), torch.tensor([0, 1])), torch.Generator())
    else:
        assert model.cfg.stages == stages and model.net.G.start[1:] == (4, 4)
        loss = model.net.D(torch.rand(2, *shape), torch.tensor([0, 1])).sum()
    assert torch.isfinite(loss)
    model.eval()
    images = model.sample(3, seed=1)
    assert images.shape == (3, *shape)
    export.save(model, tmp_path)
    assert "auto" not in json.dumps(json.loads((tmp_path / "model.json").read_text())["config"])
    assert torch.equal(export.load(tmp_path).sample(3, seed=1), images)


def test_auto_sizes_the_digits_models_as_they_were_sized_by_hand(tmp_path):
    """On 8x8 digits `auto` is the VAE of two stages [32, 64] and latent 32, and the GAN of two stages,
    weight for weight: champions exported before `auto` load into them, and a GAN exported before
    `stages` existed loads with two."""
    import json

    data = {"kind": "image", "shape": [1, 8, 8], "classes": [str(i) for i in range(10)]}
    vae = {k: v for k, v in DEFAULTS["vae"].items() if k != "train"}
    by_hand = export.build("vae", vae | {"channels": [32, 64], "latent_dim": 32}, data)
    auto = export.build("vae", vae | {"channels": "auto", "latent_dim": "auto"}, data)
    assert {k: v.shape for k, v in by_hand.net.state_dict().items()} == {
        k: v.shape for k, v in auto.net.state_dict().items()
    }
    gan = export.build("gan", {k: v for k, v in DEFAULTS["gan"].items() if k != "train"}, data).eval()
    export.save(gan, tmp_path)
    description = json.loads((tmp_path / "model.json").read_text())
    assert description["config"].pop("stages") == 2
    (tmp_path / "model.json").write_text(json.dumps(description))
    loaded = export.load(tmp_path)
    assert loaded.cfg.stages == 2 and torch.equal(loaded.sample(4, seed=2), gan.sample(4, seed=2))


def test_the_vae_prior_is_fitted_last_to_the_final_encoder_and_only_the_prior_moves():
    """after_training fits p(z | class) to where the encoder puts the training images: the prior's
    negative log-likelihood of those codes falls, the encoder and decoder stay as they were, and the
    likelihood bound on the images only tightens. A model without a learned prior has nothing to fit."""
    torch.manual_seed(0)
    model = make("vae", arch="conv", prior_components=3)
    x = torch.rand(48, 1, 8, 8).round()
    y = torch.arange(48) % 3
    frozen = {k: v.clone() for k, v in model.net.state_dict().items() if not k.startswith("prior.")}
    before = model.nll(x, y, k=16, seed=1).mean()
    done = model.after_training(x, y, seed=0)["prior_fit"]
    assert done["nats_after"] < done["nats_before"]
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in frozen.items())
    assert model.nll(x, y, k=16, seed=1).mean() < before
    assert make("vae", prior_components=0).after_training(x, y, seed=0) == {}
    assert make("gan").after_training(x, y, seed=0) == {}
