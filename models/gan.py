"""Conditional DCGAN-style GAN (Radford et al. 2016) with a hinge loss and spectral normalisation.

Stability choices: spectral norm on every discriminator layer (Miyato et al. 2018), the hinge loss
(Lim & Ye 2017), a projection discriminator for the class condition (Miyato & Koyama 2018), and Adam
with beta1 = 0.5 and two discriminator steps per generator step (TTUR-like), and DiffAugment (Zhao et
al. 2020) so the discriminator cannot memorise a small training set. A GAN has no likelihood:
its held-out figure is the squared MMD (Gaussian kernel, pixel space) between samples and the
validation images, lower is better.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from models import shaping
from models.common import GenerativeModel, OptimizerGroup, Update, class_ids, generator

# latent_dim, width, stages, d_steps, lr_d_factor, dropout, diff_augment: see models/families.py
from models.families import GANConfig as Config
from models.shaping import padded


def widths(width: int, stages: int) -> list[int]:
    """The generator's widths from its start to its last stage: 2w, then halving, never below w/2."""
    out = [2 * width]
    for _ in range(stages):
        out.append(max(out[-1] // 2, width // 2))
    return out


class Generator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple[int, int, int], n_classes: int) -> None:
        super().__init__()
        C, H, W = shape
        n = cfg.stages
        c = widths(cfg.width, n)
        self.shape = shape
        self.start = (c[0], padded(H, n) // 2**n, padded(W, n) // 2**n)  # made at the padded size, cropped
        self.embed = nn.Embedding(max(n_classes, 1), cfg.latent_dim)
        self.fc = nn.Linear(cfg.latent_dim, math.prod(self.start))
        layers: list[nn.Module] = [nn.BatchNorm2d(c[0]), nn.ReLU()]
        for a, b in itertools.pairwise(c):  # each doubles the sides
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.BatchNorm2d(b), nn.ReLU()]
        self.up = nn.Sequential(*layers, nn.Conv2d(c[-1], C, 3, 1, 1))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, H, W = self.shape
        h = self.fc(z * self.embed(y)).view(len(z), *self.start)  # class enters multiplicatively
        return torch.sigmoid(self.up(h)[:, :, :H, :W])  # (B, C, H, W) in [0, 1]


class Discriminator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple[int, int, int], n_classes: int) -> None:
        super().__init__()
        C = shape[0]
        w = cfg.width
        layers: list[nn.Module] = [
            spectral_norm(nn.Conv2d(C, w // 2, 3, 1, 1)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(w // 2, w, 4, 2, 1)),
            nn.LeakyReLU(0.2),
            nn.Dropout(cfg.dropout),
        ]
        for a in [w] + [2 * w] * (cfg.stages - 2):  # the later stages, 2w wide
            layers += [spectral_norm(nn.Conv2d(a, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.out = spectral_norm(nn.Linear(2 * w, 1))
        self.project = spectral_norm(nn.Embedding(max(n_classes, 1), 2 * w))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x * 2 - 1).sum(dim=(2, 3))  # (B, 2w), global sum pooling
        return self.out(h).squeeze(1) + (self.project(y) * h).sum(1)  # projection discriminator


class GANNet(nn.Module):
    def __init__(self, cfg: Config, shape: tuple[int, int, int], n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.G = Generator(cfg, shape, n_classes)
        self.D = Discriminator(cfg, shape, n_classes)


def diff_augment(x: torch.Tensor, policy: list[str], g: torch.Generator) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020): random translations and cutouts, differentiable in x, applied to
    real and generated images alike before the discriminator. x: (B, C, H, W) in [0, 1]."""
    B, _, H, W = x.shape
    rows = torch.arange(H, device=x.device)[None, :, None]  # (1, H, 1)
    cols = torch.arange(W, device=x.device)[None, None, :]  # (1, 1, W)

    def offsets(low: int, high: int) -> torch.Tensor:
        return torch.randint(low, high + 1, (B, 1, 1), generator=g, device=x.device)

    if "translation" in policy:  # by up to 1/8 of each side, the emptied border black
        ry, rx = max(1, H // 8), max(1, W // 8)
        src_y, src_x = rows - offsets(-ry, ry), cols - offsets(-rx, rx)  # (B, H, 1), (B, 1, W)
        inside = ((src_y >= 0) & (src_y < H) & (src_x >= 0) & (src_x < W)).unsqueeze(1)
        flat = src_y.clamp(0, H - 1) * W + src_x.clamp(0, W - 1)  # (B, H, W)
        moved = x.flatten(2).gather(2, flat.flatten(1).unsqueeze(1).expand(-1, x.shape[1], -1))
        x = moved.view_as(x) * inside
    if "cutout" in policy:  # a black square half the side, centred anywhere in the image
        sy, sx = max(1, H // 2), max(1, W // 2)
        dy, dx = rows - (offsets(0, H - 1) - sy // 2), cols - (offsets(0, W - 1) - sx // 2)
        hole = (dy >= 0) & (dy < sy) & (dx >= 0) & (dx < sx)  # clipped at the border
        x = x * (~hole).unsqueeze(1)
    return x


def mmd2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared maximum mean discrepancy with a Gaussian kernel (median-distance bandwidth)."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    d = torch.cdist(torch.cat([a, b]), torch.cat([a, b])).pow(2)
    k = torch.exp(-d / d.median().clamp_min(1e-8))
    n = len(a)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


class Model(GenerativeModel):
    family = "gan"

    @staticmethod
    def sized(config: dict, data: dict) -> dict:
        """`auto` stages from the images' size (models/shaping.py)."""
        _, height, width = data["shape"]
        return config | ({"stages": shaping.stages(height, width)} if config.get("stages") == "auto" else {})

    def __init__(self, config: dict, data: dict) -> None:
        super().__init__(config, data)
        self.shape = tuple(data["shape"])
        self.net = GANNet(self.cfg, self.shape, len(data.get("classes") or []))

    def optimizer_groups(self) -> list[OptimizerGroup]:
        """Discriminator first, then generator: Adam with beta1 = 0.5 at constant rates (DCGAN)."""
        betas = (0.5, 0.999)
        return [
            OptimizerGroup(list(self.net.D.parameters()), self.cfg.lr_d_factor, betas, scheduled=False),
            OptimizerGroup(list(self.net.G.parameters()), 1.0, betas, scheduled=False),
        ]

    def labels(self, y: torch.Tensor | None, n: int) -> torch.Tensor:
        if self.net.n_classes == 0 or y is None:
            return torch.zeros(n, dtype=torch.long, device=self.device)
        return y

    def latents(self, n: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.cfg.latent_dim, generator=g, device=self.device)

    def train_step(self, batch, update: Update, noise: torch.Generator) -> dict[str, torch.Tensor]:
        """d_steps discriminator updates (hinge loss), then one generator update, on one batch.
        Each update zeroes its own optimizer's gradients first, which also drops what the generator's
        backward left in the discriminator."""
        x, y = batch
        y = self.labels(y, len(x))

        def judge(images: torch.Tensor) -> torch.Tensor:  # the discriminator, through DiffAugment
            policy = self.cfg.diff_augment
            return self.net.D(diff_augment(images, policy, noise) if policy else images, y)

        for _ in range(self.cfg.d_steps):
            fake = self.net.G(self.latents(len(x), noise), y).detach()
            loss_d = F.relu(1 - judge(x)).mean() + F.relu(1 + judge(fake)).mean()
            update(0, loss_d)
        loss_g = -judge(self.net.G(self.latents(len(x), noise), y)).mean()
        update(1, loss_g)
        return {"loss_d": loss_d, "loss_g": loss_g}  # hinge losses, as training_figures shows them

    def heldout_loss(self, batch) -> torch.Tensor:
        x, y = batch
        y = self.labels(y, len(x))
        g = generator(1234 + len(x), self.device)  # fixed noise: comparable across epochs
        z = torch.randn(len(x), self.cfg.latent_dim, generator=g, device=self.device)
        self.net.G.eval()
        fake = self.net.G(z, y)
        return mmd2(fake, x)

    @torch.no_grad()
    def sample(self, n: int, condition=None, seed: int | None = None) -> torch.Tensor:
        """n images (n, C, H, W) in [0, 1]; `condition`: a class id, a list of them, or None (cycle)."""
        return self.sample_batch([{"n": n, "condition": condition, "seed": seed}])[0]

    @torch.no_grad()
    def sample_batch(self, jobs: list[dict]) -> list[torch.Tensor]:
        """Each job's noise comes from its own seeded generator; one generator pass for all of them."""
        zs, ys = [], []
        for job in jobs:
            g = generator(job.get("seed"), self.device)
            ys.append(class_ids(job.get("condition"), job["n"], self.net.n_classes, self.device))
            zs.append(torch.randn(job["n"], self.cfg.latent_dim, generator=g, device=self.device))
        was = self.net.G.training
        self.net.G.eval()
        out = self.net.G(torch.cat(zs), torch.cat(ys)).float()
        self.net.G.train(was)
        return list(out.split([job["n"] for job in jobs]))
