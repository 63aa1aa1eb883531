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

from .layer import Adapter, BaseLayer, Conv
from .registry import DROPOUT, Option, rank_option, register

# a regex, not a list: the names of several model families, of which any one model has only some
QKV_MODULES = r"(.*\.)?(q_proj|k_proj|v_proj|query|key|value|to_q|to_k|to_v|qkv)"


class LoRA(Adapter):
    conv2d = True
    schema = {"rank": rank_option(), "alpha": Option(float), "dropout": DROPOUT}

    def __init__(
        self,
        layer: BaseLayer,
        rank: int = 1,
        alpha: float = 1.0,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        dev = layer.device
        self.scaling = alpha / rank
        # on nn.Conv2d (as peft): A is a conv with the base's kernel (r, in, kh, kw), B a 1×1 conv (out, r, 1, 1)
        kernel, ones = tuple(layer.kernel_size), (1,) * len(layer.kernel_size)
        self.lora_A = nn.Parameter(torch.empty(rank, layer.in_features, *kernel, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(layer.out_features, rank, *ones, device=dev, dtype=dtype))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if dev.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.init_variant(layer, dtype)

    def init_variant(self, layer: BaseLayer, dtype: torch.dtype) -> None:
        """Parameters a LoRA variant adds (DoRA's magnitude); plain LoRA has none."""

    def lora_branch(self, x: Tensor) -> Tensor:
        """B A x without the scaling, in the adapter's dtype."""
        return F.linear(F.linear(x.to(self.lora_A.dtype), self.lora_A), self.lora_B)

    def add_to_output(self, x: Tensor, y: Tensor) -> Tensor:
        # cast, then drop out (peft's order): dropout's 1/(1-p) rescale is then not rounded to a bf16 input's dtype
        h = F.linear(self.dropout(x.to(self.lora_A.dtype)), self.lora_A)
        if h.dtype != y.dtype:  # fp32 adapters on a bf16 model: the branch and the sum in fp32, rounded once (peft)
            return (y + F.linear(h, self.lora_B) * self.scaling).to(y.dtype)
        # y + s·(h Bᵀ) in one GEMM (no d-wide temporary, no separate scale and add); autograd keeps h, as before
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), self.lora_B.T, alpha=self.scaling)
        return out.view(y.shape)

    def add_to_conv_output(self, x: Tensor, y: Tensor, conv: Conv) -> Tensor:
        h = conv(self.dropout(x.to(self.lora_A.dtype)), self.lora_A)
        return (y + F.conv2d(h, self.lora_B) * self.scaling).to(y.dtype)

    def delta_weight(self, weight: Tensor) -> Tensor:
        ba = self.lora_B.float().flatten(1) @ self.lora_A.float().flatten(1)
        return ba.view(weight.shape) * self.scaling


class DoRA(LoRA):
    """As peft: the magnitude scale c = m / ‖W0 + sBA‖ and the added term in the adapter's dtype (fp32),
    the output rounded once to the model's dtype."""

    uses_weight = True
    conv2d = False

    def init_variant(self, layer: BaseLayer, dtype: torch.dtype) -> None:
        w = layer.weight
        norm = torch.zeros(w.shape[0], device=w.device) if w.device.type == "meta" else w.detach().float().norm(dim=1)
        self.magnitude = nn.Parameter(norm.to(dtype))

    def weight_norm(self, weight: Tensor) -> Tensor:
        with torch.no_grad():
            w = weight.to(self.lora_A.dtype) + self.scaling * (self.lora_B @ self.lora_A)
            return w.norm(dim=1)

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        y = F.linear(x, weight, bias)
        xa = x.to(self.lora_A.dtype)
        c = self.magnitude / self.weight_norm(weight)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            base = y if bias is None else y - bias  # the bias is not rescaled
        else:  # with dropout, peft corrects the clean base output with the dropped-out input
            xa = self.dropout(xa)
            base = F.linear(xa, weight.to(xa.dtype))
        return (y + ((c - 1) * base + c * self.lora_branch(xa) * self.scaling)).to(y.dtype)

    def delta_weight(self, weight: Tensor) -> Tensor:
        w = weight.float() + super().delta_weight(weight)
        c = self.magnitude.float() / self.weight_norm(weight).float()
        return c[:, None] * w - weight.float()


register("lora", LoRA, doc="LoRA: W0 x + s B A x, r(k+d) per layer")
register("lora_qkv", LoRA, target_modules=QKV_MODULES, doc="LoRA on the attention q, k, v projections only")
register("dora", DoRA, doc="DoRA: m ⊙ (W0 + sBA) x / ‖W0 + sBA‖_row, r(k+d)+d per layer")
