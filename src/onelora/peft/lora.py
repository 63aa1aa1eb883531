"""LoRA and DoRA, numerically identical to HF peft (`LoraConfig`, `use_dora`).

LoRA (Hu et al.):
    y = W0 x + β + s · B A dropout(x)      A ∈ R^{r×k}, B ∈ R^{d×r}, s = alpha / r
    A ~ U(-1/√k, 1/√k) (kaiming_uniform, a=√5), B = 0;     ΔW = s B A
    trainable per layer: r (k + d)

DoRA (Liu et al.), magnitude m ∈ R^d and the LoRA direction:
    c = m / ‖W0 + s B A‖_row   (row norms, detached as in the DoRA paper §4.3 and peft)
    y = c ⊙ (W0 x + s B A x) + β          (the bias is not rescaled)
    m = ‖W0‖_row at init (so y = W0 x + β at step 0);    ΔW = c ⊙ (W0 + sBA) - W0
    trainable per layer: r (k + d) + d

Without dropout (or in eval) the base output is reused, as peft does since v0.14.
`lora_qkv` is LoRA restricted to the attention query/key/value projections, the
paper's memory-limited variant for LLaMA-2 13B.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layer import Adapter
from .registry import PeftError, register

QKV_MODULES = ["q_proj", "k_proj", "v_proj", "query", "key", "value", "to_q", "to_k", "to_v", "qkv"]


class LoRA(Adapter):
    def __init__(
        self,
        layer: nn.Linear,
        rank: int = 1,
        alpha: float = 1.0,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise PeftError(f"LoRA rank must be >= 1, got {rank}")
        dev = layer.weight.device
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, layer.in_features, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(layer.out_features, rank, device=dev, dtype=dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if dev.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.init_variant(layer, dtype)

    def init_variant(self, layer: nn.Linear, dtype: torch.dtype) -> None:
        """Parameters a LoRA variant adds (DoRA's magnitude); plain LoRA has none."""

    def lora_branch(self, x: Tensor) -> Tensor:
        x = x.to(self.lora_A.dtype)
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        y = F.linear(x, weight, bias)
        h = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A)
        if h.dtype != y.dtype:  # fp32 adapters on a bf16 model: the branch in fp32, then cast
            return y + (F.linear(h, self.lora_B) * self.scaling).to(y.dtype)
        # y + s·(h Bᵀ) in one GEMM (no d-wide temporary, no separate scale and add); autograd keeps h, as before
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), self.lora_B.T, alpha=self.scaling)
        return out.view(y.shape)

    def delta_weight(self, weight: Tensor) -> Tensor:
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling


class DoRA(LoRA):
    def init_variant(self, layer: nn.Linear, dtype: torch.dtype) -> None:
        w = layer.weight
        norm = torch.zeros(w.shape[0], device=w.device) if w.device.type == "meta" else w.detach().float().norm(dim=1)
        self.magnitude = nn.Parameter(norm.to(dtype))

    def weight_norm(self, weight: Tensor) -> Tensor:
        with torch.no_grad():
            w = weight.to(self.lora_A.dtype) + self.scaling * (self.lora_B @ self.lora_A)
            return w.norm(dim=1)

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        scale = (self.magnitude / self.weight_norm(weight)).to(x.dtype)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            y = scale * (F.linear(x, weight) + self.lora_branch(x).to(x.dtype))
            return y if bias is None else y + bias
        # with dropout, peft corrects the clean base output with the dropped-out input
        xd = self.dropout(x)
        return F.linear(x, weight, bias) + (scale - 1) * F.linear(xd, weight) + scale * self.lora_branch(xd).to(x.dtype)

    def delta_weight(self, weight: Tensor) -> Tensor:
        w = weight.float() + super().delta_weight(weight)
        c = self.magnitude.float() / self.weight_norm(weight).float()
        return c[:, None] * w - weight.float()


register("lora", LoRA, doc="LoRA: W0 x + s B A x, r(k+d) per layer")
register("lora_qkv", LoRA, target_modules=QKV_MODULES, doc="LoRA on the attention q, k, v projections only")
register("dora", DoRA, doc="DoRA: m ⊙ (W0 + sBA) x / ‖W0 + sBA‖_row, r(k+d)+d per layer")
