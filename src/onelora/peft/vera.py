"""VeRA: frozen random projections shared by all layers, two trainable scaling vectors.

    y = W0 x + β + λ_b ⊙ B_s (λ_d ⊙ A_s dropout(x))
    A ∈ R^{r×k_max}, B ∈ R^{d_max×r}: frozen, shared, sliced per layer (A_s = A[:, :k], B_s = B[:d])
    A ~ U(±√(6/k_max)) drawn first, then B ~ U(±√(6/r)), from a CPU generator seeded
    with `seed` (peft's `projection_prng_key`); λ_b = 0, λ_d = d_initial (0.1)
    ΔW = diag(λ_b) B_s diag(λ_d) A_s;           trainable per layer: d + r

Identical to HF peft's `VeraConfig(r=rank, projection_prng_key=seed)`. A and B are
non-persistent buffers: they are re-drawn from the seed on load, never saved. As in peft,
they hold the fp32 draw rounded to the base model's dtype (a bf16 model: bf16 values,
stored in the adapter's dtype), so an adapter trained in either library fits the other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layer import Adapter, BaseLayer
from .registry import DROPOUT, Option, rank_option, register


def _kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> Tensor:
    bound = math.sqrt(3.0) * math.sqrt(2) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeRA(Adapter):
    schema = {"rank": rank_option(), "seed": Option(int), "d_initial": Option(float), "dropout": DROPOUT}

    @staticmethod
    def shared(layers: list[BaseLayer], rank: int = 1, seed: int = 0, **_: object) -> dict[str, Tensor]:
        k_max = max(layer.in_features for layer in layers)
        d_max = max(layer.out_features for layer in layers)
        g = torch.Generator(device="cpu").manual_seed(seed)
        a = _kaiming_uniform((rank, k_max), g)
        return {"A": a, "B": _kaiming_uniform((d_max, rank), g)}

    def __init__(
        self,
        layer: BaseLayer,
        shared: dict[str, Tensor],
        rank: int = 1,
        seed: int = 0,
        d_initial: float = 0.1,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        dev = layer.device
        a, b = shared["A"][:, : layer.in_features], shared["B"][: layer.out_features]
        if layer.dtype.is_floating_point:  # peft keeps the projections in the base model's dtype
            a, b = a.to(layer.dtype), b.to(layer.dtype)
        self.register_buffer("vera_A", a.to(dev, dtype), persistent=False)
        self.register_buffer("vera_B", b.to(dev, dtype), persistent=False)
        self.lambda_b = nn.Parameter(torch.zeros(layer.out_features, device=dev, dtype=dtype))
        self.lambda_d = nn.Parameter(torch.full((rank,), d_initial, device=dev, dtype=dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def add_to_output(self, x: Tensor, y: Tensor) -> Tensor:
        h = F.linear(self.dropout(x.to(self.vera_A.dtype)), self.vera_A)  # cast, then drop out, as peft
        up = F.linear(self.lambda_d * h, self.vera_B)
        if up.dtype != y.dtype:  # fp32 adapters on a bf16 model: the sum in fp32, rounded once (peft)
            return (y + self.lambda_b * up).to(y.dtype)
        return torch.addcmul(y, self.lambda_b, up)  # the scale and the add in one pass

    def delta_weight(self, weight: Tensor) -> Tensor:
        return (self.lambda_b[:, None] * self.vera_B).float() @ (self.lambda_d[:, None] * self.vera_A).float()


register("vera", VeRA, doc="VeRA: shared frozen random A, B; λ_b, λ_d trained, d+r per layer")
