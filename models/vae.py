"""Class-conditional VAE (Kingma & Welling 2014; conditional as in Sohn et al. 2015), MLP encoder/decoder.

Pixels in [0, 1] are modelled as independent Bernoullis (binary cross-entropy), the usual choice for
digit-like images. The held-out figure is the negative ELBO in nats per image, an upper bound on the
negative log-likelihood (evaluate tightens it with importance weighting).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.common import GenerativeModel, class_ids, generator


@dataclass
class Config:
    latent_dim: int = 16
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.0
    beta: float = 1.0  # weight of the KL term (1 = the true ELBO)


def mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.SiLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class VAENet(nn.Module):
    def __init__(self, cfg: Config, n_pixels: int, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        h = cfg.hidden
        self.encoder = mlp([n_pixels + n_classes, *h], cfg.dropout)
        self.to_stats = nn.Linear(h[-1], 2 * cfg.latent_dim)  # -> (mu, log_var)
        self.decoder = nn.Sequential(
            mlp([cfg.latent_dim + n_classes, *reversed(h)], cfg.dropout), nn.Linear(h[0], n_pixels)
        )

    def onehot(self, y: torch.Tensor | None, n: int, device) -> torch.Tensor:
        if self.n_classes == 0:
            return torch.zeros(n, 0, device=device)
        return F.one_hot(y, self.n_classes).float()

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.to_stats(self.encoder(torch.cat([x, c], 1))).chunk(2, dim=1)  # (B, Z) each
        return mu, log_var.clamp(-12, 12)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, c], 1))  # logits (B, P)


class Model(GenerativeModel):
    family = "vae"
    Config = Config

    def __init__(self, config: dict, data: dict) -> None:
        super().__init__(config, data)
        self.shape = tuple(data["shape"])  # (C, H, W)
        self.n_pixels = math.prod(self.shape)
        self.net = VAENet(self.cfg, self.n_pixels, len(data.get("classes") or []))

    def elbo_terms(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example reconstruction NLL and KL, in nats. x: (B, C, H, W) in [0, 1]."""
        x = x.flatten(1)
        c = self.net.onehot(y, len(x), x.device)
        mu, log_var = self.net.encode(x, c)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp()  # reparameterisation
        logits = self.net.decode(z, c)
        rec = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="none").sum(1)
        kl = 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var).float().sum(1)
        return rec, kl

    def training_loss(self, batch) -> torch.Tensor:
        rec, kl = self.elbo_terms(*batch)
        return (rec + self.cfg.beta * kl).mean()

    def heldout_loss(self, batch) -> torch.Tensor:
        rec, kl = self.elbo_terms(*batch)
        return (rec + kl).mean()  # negative ELBO, nats per image

    @torch.no_grad()
    def sample(self, n: int, condition=None, seed: int | None = None) -> torch.Tensor:
        """n images (n, C, H, W) in [0, 1]: decoder means; `condition` is a class id, a list of them or None
        (classes cycle 0, 1, 2, ...)."""
        g = generator(seed, self.device)
        y = class_ids(condition, n, self.net.n_classes, self.device) if self.net.n_classes else None
        z = torch.randn(n, self.cfg.latent_dim, generator=g, device=self.device)
        logits = self.net.decode(z, self.net.onehot(y, n, self.device))
        return torch.sigmoid(logits.float()).view(n, *self.shape)
