"""Class-conditional VAE (Kingma & Welling 2014; conditional as in Sohn et al. 2015), with a convolutional
or an MLP encoder and decoder.

The decoder is a proper density, so its likelihood compares with any other density model: each pixel is
a Gaussian whose mean and scale the decoder predicts (a calibrated decoder, Rybkin et al. 2021), over
dequantised intensities v = (k + u) / 256, k in 0..255, u ~ U[0, 1) (Theis et al. 2016).
Then D log 256 - log p(v) bounds the negative log-likelihood of the 8-bit image from above. The held-out
figure is that bound from the ELBO in bits per dimension; evaluate tightens it with importance
weighting (Burda et al. 2016).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from models import shaping
from models.common import GenerativeModel, class_ids, generator

# arch, latent_dim, channels, hidden, dropout, beta, prior_*: types and bounds in models/families.py
from models.families import VAEConfig as Config
from models.shaping import padded

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
# the prior's last fit to the final encoder (after_training): Adam steps on the prior alone, each on
# one draw of z for this many training images (a second or two on a CPU)
PRIOR_FIT_STEPS, PRIOR_FIT_LR, PRIOR_FIT_BATCH = 1000, 0.03, 256


def mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.SiLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class Prior(nn.Module):
    """p(z | class): a mixture of K Gaussians per class (diagonal or full covariances), means, scales
    and weights learned with the rest (in the spirit of Tomczak & Welling's VampPrior, 2018). A fixed
    N(0, I) prior leaves holes where the encoder puts no data, and samples drawn from them decode to
    blurs; a learned one samples where the data is, and its ELBO stays a true bound."""

    def __init__(self, latent: int, n_classes: int, components: int, full: bool) -> None:
        super().__init__()
        k = max(n_classes, 1)
        self.means = nn.Parameter(torch.randn(k, components, latent))  # spread out at the start
        self.log_scales = nn.Parameter(torch.zeros(k, components, latent))
        self.logits = nn.Parameter(torch.zeros(k, components))
        # full covariances: the strictly lower triangle of each component's Cholesky factor (the encoder's
        # latents are correlated, and a diagonal mixture spends components on what one rotation covers)
        self.lower = nn.Parameter(torch.zeros(k, components, latent, latent)) if full else None

    def scale_tril(self, y: torch.Tensor) -> torch.Tensor:
        """Cholesky factors (B, K, Z, Z) of the components of classes y."""
        diag = torch.diag_embed(torch.exp(self.log_scales[y].clamp(-6, 3)))
        return diag if self.lower is None else diag + self.lower[y].tril(-1)

    def log_prob(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(z | y) in nats; z (..., B, Z), y (B,) -> (..., B)."""
        m, log_s = self.means[y], self.log_scales[y].clamp(-6, 3)  # (B, K, Z)
        diff = z.unsqueeze(-2) - m  # (..., B, K, Z)
        if self.lower is None:
            err = diff * torch.exp(-log_s)
        else:  # err = L^-1 diff; one inverse per class and component, not one solve per example
            with torch.autocast(z.device.type, enabled=False):  # a density: fp32 even under bf16
                classes = torch.arange(len(self.means), device=y.device)
                eye = torch.eye(diff.shape[-1], device=diff.device)
                inverse = torch.linalg.solve_triangular(self.scale_tril(classes), eye, upper=False)[y]
                err = torch.einsum("bkij,...bkj->...bki", inverse, diff.float())  # no copy per sample
        per_component = -(0.5 * err.pow(2) + log_s + LOG_SQRT_2PI).sum(-1)  # (..., B, K)
        return torch.logsumexp(per_component + F.log_softmax(self.logits[y], -1), -1)

    def sample(self, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One z per class id in y (B,) -> (B, Z)."""
        weights = F.softmax(self.logits[y], -1)  # (B, K)
        k = torch.multinomial(weights, 1, generator=g).squeeze(1)
        m, s = self.means[y, k], torch.exp(self.log_scales[y, k].clamp(-6, 3))  # (B, Z)
        eps = torch.randn(m.shape, generator=g, device=m.device, dtype=m.dtype)
        if self.lower is None:
            return m + s * eps
        tril = torch.diag_embed(s) + self.lower[y, k].tril(-1)  # (B, Z, Z): the chosen components only
        return m + (tril @ eps.unsqueeze(-1)).squeeze(-1)


class ConvEncoder(nn.Module):
    """(B, C + classes, H, W) -> (B, out): a stride-2 convolution per width in `widths`, then a linear map.
    Sides the stages do not divide are zero-padded up to the next that they do."""

    def __init__(self, shape: tuple[int, int, int], n_classes: int, widths: list[int], out: int) -> None:
        super().__init__()
        C, H, W = shape
        n = len(widths)
        self.padded = (padded(H, n), padded(W, n))
        layers: list[nn.Module] = [nn.Conv2d(C + n_classes, widths[0], 3, 1, 1), nn.SiLU()]
        for a, b in itertools.pairwise([widths[0], *widths]):  # each halves the sides
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.SiLU()]
        side_h, side_w = self.padded[0] // 2**n, self.padded[1] // 2**n
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(widths[-1] * side_h * side_w, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        return self.body(F.pad(x, (0, self.padded[1] - W, 0, self.padded[0] - H)))


class ConvDecoder(nn.Module):
    """(B, latent + classes) -> (B, 2 C H W): the mirror of ConvEncoder; mean logits, then log scales."""

    def __init__(self, shape: tuple[int, int, int], n_in: int, widths: list[int]) -> None:
        super().__init__()
        C, H, W = shape
        n = len(widths)
        self.shape, self.start = shape, (widths[-1], padded(H, n) // 2**n, padded(W, n) // 2**n)
        layers: list[nn.Module] = [
            nn.Linear(n_in, math.prod(self.start)),
            nn.SiLU(),
            nn.Unflatten(1, self.start),
        ]
        back = [widths[0], *widths][::-1]
        for a, b in itertools.pairwise(back):  # each doubles the sides
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.SiLU()]
        layers.append(
            nn.Conv2d(widths[0], 2 * C, 3, 1, 1)
        )  # channels 0..C-1: mean logits; C..2C-1: log scales
        self.body = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        _, H, W = self.shape
        return self.body(h)[:, :, :H, :W].flatten(1)  # the padding cropped off


class VAENet(nn.Module):
    def __init__(self, cfg: Config, shape: tuple[int, int, int], n_classes: int) -> None:
        super().__init__()
        self.n_classes, self.shape, self.conv = n_classes, shape, cfg.arch == "conv"
        k, full = cfg.prior_components, cfg.prior_covariance == "full"
        self.prior = Prior(cfg.latent_dim, n_classes, k, full) if k else None
        n_pixels = math.prod(shape)
        if self.conv:  # translation-equivariant: shapes anywhere in the picture, from few images
            self.encoder = ConvEncoder(shape, n_classes, cfg.channels, 2 * cfg.latent_dim)
            self.to_stats = nn.Identity()
            self.decoder = ConvDecoder(shape, cfg.latent_dim + n_classes, cfg.channels)
            return
        h = cfg.hidden
        self.encoder = mlp([n_pixels + n_classes, *h], cfg.dropout)
        self.to_stats = nn.Linear(h[-1], 2 * cfg.latent_dim)  # -> (mu, log_var)
        self.decoder = nn.Sequential(
            mlp([cfg.latent_dim + n_classes, *reversed(h)], cfg.dropout), nn.Linear(h[0], 2 * n_pixels)
        )  # -> (mean logits, log scale) per pixel

    def onehot(self, y: torch.Tensor | None, n: int, device) -> torch.Tensor:
        if self.n_classes == 0:
            return torch.zeros(n, 0, device=device)
        return F.one_hot(y, self.n_classes).float()

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, P) flattened pixels, c: (B, classes) one-hot."""
        if self.conv:  # the class as constant extra channels
            image = x.view(len(x), *self.shape)
            planes = c[:, :, None, None].expand(-1, -1, *self.shape[1:])
            inputs = torch.cat([image, planes], 1)
        else:
            inputs = torch.cat([x, c], 1)
        mu, log_var = self.to_stats(self.encoder(inputs)).chunk(2, dim=1)  # (B, Z) each
        return mu, log_var.clamp(-12, 12)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, c], 1))  # (B, 2P): mean logits, log scales

    @staticmethod
    def pixel_gaussians(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's output (..., 2P) -> each pixel's mean and log scale (..., P) each."""
        logits, log_s = out.float().chunk(2, dim=-1)
        return torch.sigmoid(logits), log_s.clamp(-9.0, 2.0)

    def log_px(self, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """log p(v | z) per example, nats: independent Gaussians, mean sigmoid(logits). v: (..., P)."""
        mean, log_s = self.pixel_gaussians(out)
        err = (v - mean) * torch.exp(-log_s)
        return -(0.5 * err.pow(2) + log_s + LOG_SQRT_2PI).sum(-1)


class Model(GenerativeModel):
    family = "vae"

    @staticmethod
    def sized(config: dict, data: dict) -> dict:
        """`auto` widths and latent size from the images' shape (models/shaping.py)."""
        shape = tuple(data["shape"])
        auto = {"channels": shaping.widths(shape), "latent_dim": shaping.latent_dim(shape)}
        return config | {k: v for k, v in auto.items() if config.get(k) == "auto"}

    def __init__(self, config: dict, data: dict) -> None:
        super().__init__(config, data)
        self.shape = tuple(data["shape"])  # (C, H, W)
        self.n_pixels = math.prod(self.shape)
        self.net = VAENet(self.cfg, self.shape, len(data.get("classes") or []))

    def dequantise(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """x in [0, 1] (k / 255) -> v = (k + u) / 256, flattened to (B, P)."""
        k = torch.round(x.flatten(1).float() * 255)
        u = torch.rand(k.shape, generator=g, device=k.device)
        return (k + u) / 256

    def elbo_terms(
        self, v: torch.Tensor, y: torch.Tensor | None, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example reconstruction term -log p(v | z) and KL(q(z | v) || p(z)), in nats."""
        c = self.net.onehot(y, len(v), v.device)
        mu, log_var = self.net.encode(v, c)
        eps = torch.randn(mu.shape, generator=g, device=mu.device, dtype=mu.dtype)
        z = mu + eps * (0.5 * log_var).exp()  # reparameterisation
        rec = -self.net.log_px(v, self.net.decode(z, c))
        if self.net.prior is None:
            kl = 0.5 * (mu.pow(2) + log_var.exp() - 1 - log_var).float().sum(1)
        else:  # a mixture has no closed-form KL: its one-sample estimate, log q(z | v) - log p(z | y)
            log_q = -(0.5 * eps.pow(2) + 0.5 * log_var + LOG_SQRT_2PI).float().sum(1)
            kl = log_q - self.net.prior.log_prob(z.float(), self.prior_classes(y, len(v), v.device))
        return rec, kl

    def prior_classes(self, y: torch.Tensor | None, n: int, device) -> torch.Tensor:
        """The class ids the prior is indexed by (all 0 for a model without classes)."""
        return y if self.net.n_classes and y is not None else torch.zeros(n, dtype=torch.long, device=device)

    def log_pz(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """log p(z | y), nats; z (..., B, Z)."""
        if self.net.prior is None:
            return -(0.5 * z.pow(2) + LOG_SQRT_2PI).sum(-1)
        return self.net.prior.log_prob(z, self.prior_classes(y, z.shape[-2], z.device))

    def draw_z(self, y: torch.Tensor | None, n: int, g: torch.Generator) -> torch.Tensor:
        """n latents from the prior (for class ids y)."""
        if self.net.prior is None:
            return torch.randn(n, self.cfg.latent_dim, generator=g, device=self.device)
        return self.net.prior.sample(self.prior_classes(y, n, self.device), g)

    def bits_per_dim(self, nll_nats: torch.Tensor) -> torch.Tensor:
        """-log p(v) in nats per image -> an upper bound on the 8-bit image's NLL in bits per dimension."""
        return (nll_nats + self.n_pixels * math.log(256)) / (self.n_pixels * math.log(2))

    def training_loss(self, batch, noise: torch.Generator) -> torch.Tensor:
        x, y = batch
        rec, kl = self.elbo_terms(self.dequantise(x, noise), y, noise)
        return (rec + self.cfg.beta * kl).mean()

    def training_figures(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # on the 8-bit scale (positive, comparable with val_loss), not the density's nats, which go negative
        return {"train_bits_per_dim": self.bits_per_dim(losses["loss"].detach())}

    def heldout_loss(self, batch) -> torch.Tensor:
        x, y = batch
        g = generator(0, x.device)  # the same noise every epoch: epochs compare on equal terms
        rec, kl = self.elbo_terms(self.dequantise(x, g), y, g)
        return self.bits_per_dim(rec + kl).mean()  # negative ELBO, bits per dimension

    @torch.no_grad()
    def nll(self, x: torch.Tensor, y: torch.Tensor | None, k: int = 64, seed: int = 0) -> torch.Tensor:
        """Importance-weighted bound on -log p(v) per image (nats), k samples from q(z | v) (IWAE);
        tighter than the ELBO as k grows. x: (B, C, H, W) in [0, 1]."""
        g = generator(seed, x.device)
        v = self.dequantise(x, g)
        c = self.net.onehot(y, len(v), v.device)
        mu, log_var = self.net.encode(v, c)
        std = (0.5 * log_var).exp()
        eps = torch.randn((k, *mu.shape), generator=g, device=mu.device)
        z = mu + eps * std  # (k, B, Z)
        out = self.net.decode(z.flatten(0, 1), c.repeat(k, 1)).view(k, len(v), -1)
        log_pz = self.log_pz(z, y)
        log_qz = -(0.5 * eps.pow(2) + 0.5 * log_var + LOG_SQRT_2PI).sum(-1)
        log_w = self.net.log_px(v, out) + log_pz - log_qz  # (k, B)
        return -(torch.logsumexp(log_w, 0) - math.log(k))

    def after_training(self, x: torch.Tensor, y: torch.Tensor | None, seed: int) -> dict:
        """Fit the learned prior to where the final encoder puts the training images (its aggregate
        posterior), the encoder and decoder held still: the prior that maximises the ELBO for them, so
        the likelihood bound only tightens. During training the prior chases a moving encoder and lags
        it; on a small folder its samples then fall between the classes' codes and decode to blobs (the
        16x16 shapes: FD 279 before, 97 after; docs/stages/train.md)."""
        if self.net.prior is None:
            return {}
        g = generator(seed, x.device)
        was = self.training
        self.eval()
        ids = y.long() if y is not None else torch.zeros(len(x), dtype=torch.long, device=x.device)
        with torch.no_grad():
            stats = [
                self.net.encode(self.dequantise(xb, g), self.net.onehot(yb, len(xb), x.device))
                for xb, yb in zip(x.split(512), ids.split(512), strict=True)
            ]
        mu, log_var = torch.cat([m for m, _ in stats]), torch.cat([v for _, v in stats])
        classes = self.prior_classes(ids if y is not None else None, len(x), x.device)
        std = (0.5 * log_var).exp()

        def nll(rows: torch.Tensor) -> torch.Tensor:  # -log p(z | y) of one draw of z ~ q(z | x) per row
            z = mu[rows] + std[rows] * torch.randn(std[rows].shape, generator=g, device=std.device)
            return -self.net.prior.log_prob(z, classes[rows]).mean()

        everyone = torch.arange(len(x), device=x.device)
        with torch.no_grad():
            before = float(sum(nll(everyone) for _ in range(8)) / 8)
        opt = torch.optim.Adam(self.net.prior.parameters(), lr=PRIOR_FIT_LR)
        for _ in range(PRIOR_FIT_STEPS):
            rows = torch.randint(0, len(x), (PRIOR_FIT_BATCH,), generator=g, device=x.device)
            loss = nll(rows)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            after = float(sum(nll(everyone) for _ in range(8)) / 8)
        self.train(was)
        return {
            "prior_fit": {
                "steps": PRIOR_FIT_STEPS,
                "nats_before": round(before, 3),
                "nats_after": round(after, 3),
            }
        }

    @torch.no_grad()
    def sample(self, n: int, condition=None, seed: int | None = None) -> torch.Tensor:
        """n images (n, C, H, W) in [0, 1] drawn from the model: z from the prior, then each pixel from
        the decoder's Gaussian, clipped to [0, 1]. The decoder's means alone are smoother than any real
        image (further from real data on FD and recall, see docs/stages/train.md); `interpolate` shows them.
        `condition` is a class id, a list of them or None (classes cycle 0, 1, 2, ...)."""
        return self.sample_batch([{"n": n, "condition": condition, "seed": seed}])[0]

    @torch.no_grad()
    def sample_batch(self, jobs: list[dict]) -> list[torch.Tensor]:
        """Each job's latents and pixel noise come from its own seeded generator; one decoder pass for
        all of them."""
        k = self.net.n_classes
        zs, cs, gens = [], [], []
        for job in jobs:
            n, g = job["n"], generator(job.get("seed"), self.device)
            y = class_ids(job.get("condition"), n, k, self.device) if k else None
            cs.append(self.net.onehot(y, n, self.device))
            zs.append(self.draw_z(y, n, g))
            gens.append(g)
        out = self.net.decode(torch.cat(zs), torch.cat(cs))
        images = []
        for part, g in zip(out.split([job["n"] for job in jobs]), gens, strict=True):
            mean, log_s = self.net.pixel_gaussians(part)
            pixels = mean + torch.randn(mean.shape, generator=g, device=mean.device) * log_s.exp()
            images.append(pixels.clamp(0, 1).view(-1, *self.shape))
        return images

    @torch.no_grad()
    def interpolate(self, steps: int = 10, rows: int = 8, seed: int | None = None) -> torch.Tensor:
        """A picture of the latent space: per row, decoder means along a straight line between two random
        latents (rows cycle through the classes). Returns (rows * steps, C, H, W) in [0, 1]."""
        g = generator(seed, self.device)
        n_classes = self.net.n_classes
        row_class = torch.arange(rows, device=self.device) % max(n_classes, 1)
        ends = torch.stack([self.draw_z(row_class if n_classes else None, rows, g) for _ in range(2)])
        t = torch.linspace(0, 1, steps, device=self.device)[None, :, None]  # (1, steps, 1)
        z = (ends[0][:, None] * (1 - t) + ends[1][:, None] * t).flatten(0, 1)  # (rows * steps, Z)
        y = row_class.repeat_interleave(steps)
        mean, _ = self.net.pixel_gaussians(
            self.net.decode(z, self.net.onehot(y if n_classes else None, len(z), self.device))
        )
        return mean.view(len(z), *self.shape)
