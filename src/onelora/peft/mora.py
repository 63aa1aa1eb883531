"""MoRA (Jiang et al.) types 1 ("sharing") and 6 ("RoPE"), as in the official kongds/MoRA.

One square trainable matrix M ∈ R^{r̂×r̂}, zero at init, no scaling. With k = in_features,
d = out_features, the input is padded to a multiple of r̂ by repeating its own first
features (wrap-around, x_pad = [x, x[:pad]]) and cut into n = ⌈k/r̂⌉ chunks x_g:

    type 1:  c = Σ_g x_g               (features summed modulo r̂)
             y = tile(M c)[:d]         (out[o] = (M c)[o mod r̂])
    type 6:  x̃_g = x_g ⊙ cos_g + rot_half(x_g) ⊙ sin_g     (RoPE with the chunk index g
             as position, θ_i = 10000^(-2i/r̂)), y = tile(flatten_g(M x̃_g))[:d]

Rank rule: the paper's counts use r̂ = round(√d) per layer (`rank_rule="paper"`, the
default; LLaMA-2-7B: 1,360,960 / 1,347,584 parameters); the official code uses
r̂ = round(√((k+d)·r)) (`rank_rule="official"`). Type 6 rounds r̂ down to even.
Trainable per layer: r̂². With r̂ = 1, type 1 is exactly 1LoRA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layer import Adapter, BaseLayer
from .registry import DROPOUT, Option, PeftError, register


def mora_rank(in_features: int, out_features: int, rank: int, mora_type: int, rank_rule: str) -> int:
    if rank_rule == "paper":
        r_hat = int(math.sqrt(out_features) + 0.5)
    elif rank_rule == "official":
        r_hat = int(math.sqrt((in_features + out_features) * rank) + 0.5)
    else:
        raise PeftError(f"unknown MoRA rank_rule {rank_rule!r}; valid: paper, official")
    if mora_type == 6:
        r_hat = r_hat // 2 * 2
    return max(r_hat, 2 if mora_type == 6 else 1)


def rope_tables(n_chunks: int, r: int) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, r, 2, dtype=torch.float64) / r))
    freqs = torch.outer(torch.arange(n_chunks, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().float(), emb.sin().float()


def rotate_half(x: Tensor) -> Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class MoRA(Adapter):
    schema = {
        "mora_type": Option(int, "1 or 6", lambda v: v in (1, 6)),
        "rank": Option(int),  # used by rank_rule=official only
        "rank_rule": Option(str, "'paper' or 'official'", lambda v: v in ("paper", "official")),
        "dropout": DROPOUT,
    }

    @staticmethod
    def check_options(opts: dict) -> str | None:
        if opts.get("rank_rule") == "official" and opts.get("rank", 1) < 1:
            return f"rank={opts['rank']!r} with rank_rule=official is not allowed; that rule needs rank >= 1"
        return None

    def __init__(
        self,
        layer: BaseLayer,
        mora_type: int = 1,
        rank: int = 1,
        rank_rule: str = "paper",
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.mora_type = mora_type
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.r = mora_rank(layer.in_features, layer.out_features, rank, mora_type, rank_rule)
        self.pad = (-self.in_features) % self.r
        self.n_chunks = (self.in_features + self.pad) // self.r
        dev = layer.device
        self.M = nn.Parameter(torch.zeros(self.r, self.r, device=dev, dtype=dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if mora_type == 6:
            cos, sin = rope_tables(self.n_chunks, self.r)
            self.register_buffer("cos", cos.to(dev, dtype), persistent=False)
            self.register_buffer("sin", sin.to(dev, dtype), persistent=False)

    def _chunks(self, x: Tensor) -> Tensor:
        """Wrap-around padding x_pad[i] = x[i mod k]: `[x, x[:pad]]` as kongds/MoRA when pad <= k,
        and x repeated as often as needed when r̂ > 2k (where the official code fails)."""
        if self.pad:
            k, total = self.in_features, self.n_chunks * self.r
            whole = (total - 1) // k  # copies of x that fit entirely, then a partial one
            x = torch.cat((x,) * whole + (x[..., : total - whole * k],), dim=-1)
        return x.view(*x.shape[:-1], self.n_chunks, self.r)

    def _decompress(self, y: Tensor) -> Tensor:
        """Tile the flat output to at least d features and keep the first d."""
        reps = -(-self.out_features // y.shape[-1])
        return (y.repeat(*([1] * (y.dim() - 1)), reps) if reps > 1 else y)[..., : self.out_features]

    def delta(self, x: Tensor) -> Tensor:
        chunks = self._chunks(self.dropout(x).to(self.M.dtype))
        if self.mora_type == 1:
            return self._decompress(F.linear(chunks.sum(-2), self.M))
        rotated = chunks * self.cos + rotate_half(chunks) * self.sin
        y = F.linear(rotated, self.M)
        return self._decompress(y.flatten(-2))

    def add_to_output(self, x: Tensor, y: Tensor) -> Tensor:
        return y + self.delta(x).to(y.dtype)

    def delta_weight(self, weight: Tensor) -> Tensor:
        """ΔW built block by block (not by probing the forward), so tests can compare the two."""
        r, k, n = self.r, self.in_features, self.n_chunks
        m = self.M.float()
        cols = torch.arange(n * r, device=m.device) % k  # padded input position -> original feature
        if self.mora_type == 1:
            comp = torch.zeros(r, k, device=m.device)
            comp.index_put_(
                (torch.arange(n * r, device=m.device) % r, cols), torch.ones(n * r, device=m.device), accumulate=True
            )
            rows = m @ comp  # (r, k)
            return rows[torch.arange(self.out_features, device=m.device) % r]
        j = torch.zeros(r, r, device=m.device)
        h = r // 2
        j[:h, h:] = -torch.eye(h, device=m.device)
        j[h:, :h] = torch.eye(h, device=m.device)
        full = torch.zeros(n * r, k, device=m.device)
        for g in range(n):
            rot = torch.diag(self.cos[g].float()) + torch.diag(self.sin[g].float()) @ j
            block = m @ rot  # (r, r): output chunk g <- input chunk g
            full[g * r : (g + 1) * r].index_add_(1, cols[g * r : (g + 1) * r], block)
        return full[torch.arange(self.out_features, device=m.device) % (n * r)]


register("mora1", MoRA, mora_type=1, doc="MoRA type 1 (sharing): r̂² per layer")
register("mora6", MoRA, mora_type=6, doc="MoRA type 6 (RoPE): r̂² per layer")
