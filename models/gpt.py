"""Character-level GPT: a causal transformer in the style of nanoGPT (Radford et al. 2019; Karpathy).

Pre-norm blocks, flash attention through F.scaled_dot_product_attention, tied input/output
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


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (
            t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)
        )  # (B, nh, T, hs)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
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
            nn.Dropout(cfg.dropout),
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
        self.drop = nn.Dropout(cfg.dropout)
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
