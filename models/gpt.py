"""Character-level GPT: a causal transformer in the style of nanoGPT (Radford et al. 2019; Karpathy).

Pre-norm blocks, flash attention through F.scaled_dot_product_attention (`attend`), tied input/output
embeddings, learned or rotary positions (Su et al. 2021). The held-out figure is bits per character.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.common import GenerativeModel, generator

# block_size (T), n_layer, n_head, n_embd (C), dropout, bias, position (learned | rope), fp32_residual,
# temperature and top_k (sampling defaults): types and bounds in models/families.py, values in params.yaml
from models.families import GPTConfig as Config


def rotary_tables(T: int, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, head_size / 2) of each position's rotation angles, base 10000 (RoFormer)."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_size, 2).float() / head_size)
    angles = torch.outer(torch.arange(T).float(), inv_freq)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + hs/2]) of q or k (B, nh, T, hs) by its position's angle (GPT-NeoX
    layout): q.k then depends on positions only through their difference. In float32 (Llama does too):
    bf16 would round the rotation of the far positions."""
    T = x.shape[2]
    cos, sin = cos[:T], sin[:T]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """F.dropout in training; on a CPU with a cheaper mask. F.dropout's bernoulli_ draws one float per
    value: 12.5 ms for 2M values on 2 cores, the dearest part of a small model's step after attention.
    Here one 64-bit draw gives four 16-bit values (0.8 ms), each kept when it is above p's cut, so p is
    rounded to 1/65536. The GPU keeps the fused kernel."""
    if p == 0 or x.device.type != "cpu":
        return F.dropout(x, p)
    n, cut = x.numel(), min(round(p * 65536), 65535)  # at least one value in 65,536 kept
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
    keep = bits.view(torch.int16)[:n].view(x.shape) >= cut - 32768
    return x * keep * (65536 / (65536 - cut))


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p) if self.training else x


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Causal attention of q, k, v (B, nh, T, hs). The fused kernel, but for bf16 on a CPU at short
    contexts, where two matmuls with a float32 softmax are faster: T=128, forward and backward of one
    layer in 7 ms against the fused kernel's 23 ms (2 cores). In float32, or above T=256 (at 512 it
    is twice as fast), the fused kernel is used."""
    T = q.shape[2]
    if q.device.type != "cpu" or q.dtype == torch.float32 or T > 256:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # q, not the T x T scores
    future = torch.full((T, T), float("-inf"), device=q.device).triu(1)  # added in float32: one pass
    weights = (scores + future).softmax(dim=-1).to(v.dtype)
    return dropout(weights, dropout_p) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head = cfg.n_head
        # Dropout of the attention weights draws a mask of B * nh * T * T values (a CPU's dearest part
        # of a small model's step after attention itself); attn_dropout: 0 keeps the residual dropout.
        self.attn_dropout = cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (
            t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)
        )  # (B, nh, T, hs)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        y = attend(q, k, v, self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias),
            nn.GELU(),
            nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias),
            Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), rope)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: Config, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        if cfg.position not in ("learned", "rope"):
            raise ValueError(f"position must be learned or rope, not {cfg.position!r}")
        if cfg.position == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:  # tables, not weights: rebuilt from the config, so not exported (persistent=False)
            assert (cfg.n_embd // cfg.n_head) % 2 == 0, "rope needs an even head size (n_embd / n_head)"
            cos, sin = rotary_tables(cfg.block_size, cfg.n_embd // cfg.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.head.weight = self.wte.weight  # weight tying (Press & Wolf 2017)
        self.apply(self._init)
        for name, p in self.named_parameters():  # scaled residual projections (GPT-2)
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.cfg.position == "learned":
            x = x + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        else:
            rope = (self.rope_cos, self.rope_sin)
        x = self.drop(x)
        if not self.cfg.fp32_residual and torch.is_autocast_enabled(x.device.type):
            # The adds and norms along the residual stream are memory-bound: bf16 halves their traffic.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        for block in self.blocks:
            x = block(x, rope)
        return self.head(self.ln_f(x))  # logits (B, T, vocab)


class Model(GenerativeModel):
    family = "gpt"

    def __init__(self, config: dict, data: dict) -> None:
        super().__init__(config, data)
        self.vocab: list[str] = list(data["vocab"])
        self.stoi = {ch: i for i, ch in enumerate(self.vocab)}
        self.net = GPT(self.cfg, len(self.vocab))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())  # nats per character

    def training_loss(self, batch, noise: torch.Generator) -> torch.Tensor:
        # Dropout draws from torch's global generator (neither nn.Dropout nor the attention kernel takes
        # one): the training loop seeds it at the start of each epoch (tasks/training/module.py).
        return self.loss(*batch)

    def training_figures(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"train_bits_per_char": losses["loss"].detach() / math.log(2)}

    def heldout_loss(self, batch) -> torch.Tensor:
        return self.loss(*batch) / math.log(2)  # bits per character

    @torch.no_grad()
    def bits_per_char(self, ids: torch.Tensor, batch_size: int = 32) -> float:
        """Bits per character over a whole 1-D id sequence: windows of block_size with a stride of half a
        block, each character scored once with at least half a block of context (the first from the start)."""
        T, stride = self.cfg.block_size, max(1, self.cfg.block_size // 2)
        ids = ids.to(self.device).long()
        starts = list(range(0, max(1, len(ids) - T), stride))
        total, count = 0.0, 0
        for i in range(0, len(starts), batch_size):
            chunk = starts[i : i + batch_size]
            idx = torch.tensor(chunk, device=self.device)[:, None] + torch.arange(T + 1, device=self.device)
            idx = idx.clamp_max(len(ids) - 1)
            window = ids[idx]
            logits = self.net(window[:, :-1]).float()
            nll = F.cross_entropy(logits.transpose(1, 2), window[:, 1:], reduction="none")  # (B, T)
            for row, s in enumerate(chunk):
                first = 0 if s == 0 else T - stride  # score only characters not scored by the previous window
                last = min(T, len(ids) - 1 - s)
                total += nll[row, first:last].sum().item()
                count += max(0, last - first)
        return total / max(count, 1) / math.log(2)

    def encode(self, text: str) -> list[int]:
        unknown = sorted({ch for ch in text if ch not in self.stoi})
        if unknown:
            raise ValueError(f"prompt has characters outside the vocabulary: {''.join(unknown)!r}")
        return [self.stoi[ch] for ch in text]

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, new: int, temperature: torch.Tensor, top_k: torch.Tensor, draws
    ) -> torch.Tensor:
        """Extend idx (B, T) by `new` characters. Per row: a temperature (<= 0: greedy) and a top-k
        (0: off); `draws()` gives one uniform number per row and step, from each request's own
        generator, so a row's text does not depend on the other rows of the batch."""
        V = len(self.vocab)
        for _ in range(new):
            logits = self.net(idx[:, -self.cfg.block_size :])[:, -1, :].float()  # (B, V)
            greedy = temperature <= 0
            logits = logits / torch.where(greedy, 1.0, temperature)[:, None]
            kth = logits.sort(-1, descending=True).values.gather(1, (top_k.clamp(1, V) - 1)[:, None])
            logits = torch.where((top_k[:, None] > 0) & (logits < kth), float("-inf"), logits)
            cdf = F.softmax(logits, -1).cumsum(-1)  # inverse-CDF sampling with the row's own number
            nxt = torch.searchsorted(cdf, draws()[:, None]).clamp_max(V - 1)
            nxt = torch.where(greedy[:, None], logits.argmax(-1, keepdim=True), nxt)
            idx = torch.cat([idx, nxt], 1)
        return idx

    @torch.no_grad()
    def sample(
        self,
        n: int,
        condition: str | None = None,
        seed: int | None = None,
        length: int = 200,
        temperature: float | None = None,
        top_k: int | None = None,
    ) -> list[str]:
        """n texts of `length` new characters continuing the prompt `condition` (default: a newline)."""
        job = {"n": n, "condition": condition, "seed": seed, "length": length}
        return self.sample_batch([job | {"temperature": temperature, "top_k": top_k}])[0]

    @torch.no_grad()
    def sample_batch(self, jobs: list[dict]) -> list[list[str]]:
        """Jobs whose prompts have the same length decode together, one forward pass per character."""
        prompts = [j.get("condition") or ("\n" if "\n" in self.stoi else self.vocab[0]) for j in jobs]
        encoded = [self.encode(p) for p in prompts]
        results: list[list[str]] = [[] for _ in jobs]
        for size in sorted({len(e) for e in encoded}):
            group = [i for i, e in enumerate(encoded) if len(e) == size]
            rows = [i for i in group for _ in range(jobs[i]["n"])]
            gens = [generator(jobs[i].get("seed"), self.device) for i in group]

            def draws(group=group, gens=gens) -> torch.Tensor:
                return torch.cat(
                    [
                        torch.rand(jobs[i]["n"], generator=g, device=self.device)
                        for i, g in zip(group, gens, strict=True)
                    ]
                )

            t = [jobs[i].get("temperature") for i in rows]
            k = [jobs[i].get("top_k") for i in rows]
            temperature = torch.tensor(
                [self.cfg.temperature if v is None else v for v in t], device=self.device
            )
            top_k = torch.tensor([self.cfg.top_k if v is None else v for v in k], device=self.device)
            idx = torch.tensor([encoded[i] for i in rows], device=self.device, dtype=torch.long)
            new = max(jobs[i].get("length", 200) for i in group)
            out = self.generate(idx, new, temperature.float(), top_k.long(), draws)
            for r, i in enumerate(rows):
                text = "".join(
                    self.vocab[c] for c in out[r, size : size + jobs[i].get("length", 200)].tolist()
                )
                results[i].append(prompts[i] + text)
        return results
