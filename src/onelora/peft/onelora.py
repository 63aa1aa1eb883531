"""1LoRA: summation compression, one trainable vector per layer.

    y = W0 x + β + b · (1ᵀ x)          b ∈ R^d, b = 0 at init
    ΔW = b 1ᵀ                          (merge: add b[i] to every entry of row i)

The compression `1ᵀx` is fixed, the decompression `b` is learned: d parameters per
layer (the paper's Table 1). Autograd keeps one scalar per token (`s = 1ᵀx`) for
`grad_b = Σ_tokens g · s`, and none of the layer input: `grad_x` gains `(gᵀb) 1`.

`onelora_random` is the paper's ablation (Table S1): `b · (vᵀx)` with a fixed random
`v ~ N(0, 1)` per layer (seeded; `‖v‖ ≈ ‖1‖ = √k`), stored as a buffer, not trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layer import Adapter
from .registry import register


def onelora_forward(x: Tensor, weight: Tensor, bias: Tensor | None, b: Tensor) -> Tensor:
    """The paper's listing `linear(x) + b * x.sum(-1, keepdim=True)` (b kept in fp32)."""
    y = F.linear(x, weight, bias)
    s = x.sum(-1, keepdim=True, dtype=b.dtype)
    return y + (s * b).to(y.dtype)


class OneLoRA(Adapter):
    def __init__(self, layer: nn.Linear, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(layer.out_features, device=layer.weight.device, dtype=dtype))

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return onelora_forward(x, weight, bias, self.b)

    def delta_weight(self, weight: Tensor) -> Tensor:
        return self.b.float()[:, None].expand(-1, weight.shape[1])


class OneLoRARandom(Adapter):
    def __init__(self, layer: nn.Linear, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed + _layer_counter(layer))
        self.b = nn.Parameter(torch.zeros(layer.out_features, device=layer.weight.device, dtype=dtype))
        v = torch.randn(layer.in_features, generator=g, dtype=dtype)
        self.register_buffer("v", v.to(layer.weight.device if layer.weight.device.type != "meta" else "meta"))

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        y = F.linear(x, weight, bias)
        s = (x.to(self.v.dtype) @ self.v).unsqueeze(-1)
        return y + (s * self.b).to(y.dtype)

    def delta_weight(self, weight: Tensor) -> Tensor:
        return self.b.float()[:, None] * self.v.float()[None, :]


def _layer_counter(layer: nn.Linear) -> int:
    """The layer's index among adapted layers (set by `apply_peft`), so each v differs."""
    return int(getattr(layer, "_peft_index", 0))


register("onelora", OneLoRA, doc="1LoRA: W0 x + b (1ᵀx), d per layer")
register("onelora_random", OneLoRARandom, doc="1LoRA with a fixed random compression vector (Table S1)")
