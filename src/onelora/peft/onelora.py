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

from .layer import Adapter, BaseLayer, Conv
from .registry import Option, register


def onelora_reference(x: Tensor, weight: Tensor, bias: Tensor | None, b: Tensor) -> Tensor:
    """The paper's listing, `linear(x) + b * x.sum(-1, keepdim=True)`, in plain autograd (the tests' oracle)."""
    y = F.linear(x, weight, bias)
    s = x.sum(-1, keepdim=True, dtype=b.dtype)
    return y + (s * b).to(y.dtype)


def _matvec_t(g: Tensor, s: Tensor, dtype: torch.dtype) -> Tensor:
    """gᵀ s accumulated in `dtype` (fp32): no fp32 copy of g where the backend can widen the output."""
    if g.dtype == dtype:
        return torch.mv(g.t(), s)
    if g.is_cuda and g.dtype in (torch.bfloat16, torch.float16):
        return torch.mm(g.t(), s.to(g.dtype)[:, None], out_dtype=dtype)[:, 0]
    return torch.mv(g.t().to(dtype), s)


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """`t.to(dtype)` without dispatching an op where it would do nothing (each op is a kernel launch on a GPU)."""
    return t if t.dtype == dtype else t.to(dtype)


def use_merged_weight(x: Tensor, weight: Tensor, b: Tensor) -> bool:
    """Fold b into the weight, `(W + b 1ᵀ) x`, where that moves fewer bytes than adding b·(1ᵀx) to the output.

    Per layer (T tokens, k inputs, d outputs) the additive form touches about 3T(k+d) elements beyond the
    linear itself, the merged form 4dk + Tk (building W + b 1ᵀ in forward and again in backward). Measured on
    CPU (`scripts/bench.py --layers`), merged wins on ViT shapes (T=788) and loses on Llama's (T=512, wide
    layers); the 0.8 margin keeps ties additive (the merged form allocates a weight-sized tensor). Only in
    fp32/fp64 without autocast: a bf16 W + b 1ᵀ would round small updates of b away.
    """
    if x.dtype not in (torch.float32, torch.float64) or weight.dtype != x.dtype or b.dtype != x.dtype:
        return False
    if x.device.type != "meta" and torch.is_autocast_enabled(x.device.type):
        return False
    d, k = weight.shape
    tokens = x.numel() // k
    return 4 * d * k + tokens * k < 0.8 * 3 * tokens * (k + d)


class OneLoRAFunction(torch.autograd.Function):
    """y = W x + β + b (1ᵀx), keeping one scalar per token for backward (nothing of x).

    Additive form: one linear, one sum over the input, one fused multiply-add into the output; backward
    grad_x = g W + (g b) 1ᵀ. Merged form (see `use_merged_weight`): y = (W + b 1ᵀ) x + β, grad_x = g (W + b 1ᵀ).
    Both: grad_b = gᵀ s with s = 1ᵀx (accumulated in b's dtype, fp32), grad_β = Σ g. The paper's listing in
    plain autograd keeps the same single scalar per token but makes more passes over the activations.
    Under autocast the output may be lower precision than x; backward casts to match.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, weight: Tensor, bias: Tensor | None, b: Tensor, merged: bool | None = None
    ) -> Tensor:
        """`merged`: force a form (the layer benchmark compares them); None chooses by `use_merged_weight`."""
        ctx.merged = use_merged_weight(x, weight, b) if merged is None else merged
        if ctx.merged:  # b as a column (a view of the parameter, saved as such: backward needs no second view)
            s = x.sum(-1, dtype=b.dtype)
            b = b[:, None]
            y = F.linear(x, weight + b, bias)
            s = s if s.dim() == 1 else s.reshape(-1)
        else:
            s = x.sum(-1, keepdim=True, dtype=b.dtype)
            y = F.linear(x, weight, bias).addcmul_(s, b)  # in the wider dtype of s and b, rounded once into y
            s = s.view(-1)
        ctx.save_for_backward(weight, b, s)
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, None, Tensor | None, Tensor | None, None]:  # type: ignore[override]
        # Every op here is a kernel launch on a GPU, so none is spent on casts or reshapes that do nothing:
        # a training step costs BitFit's ops plus 4 per layer (tests/test_onelora_fast.py counts them).
        weight, b, s = ctx.saved_tensors
        grad_x = grad_bias = grad_b = None
        g2 = g if g.dim() == 2 else g.reshape(-1, g.shape[-1])
        if ctx.needs_input_grad[0]:
            if ctx.merged:
                grad_x = g2.mm(weight + b)
            else:  # the rank-1 term (g b) 1ᵀ is the GEMM's broadcast input: one pass over grad_x, not two
                grad_x = torch.addmm(torch.mv(g2, _cast(b, g.dtype))[:, None], g2, _cast(weight, g.dtype))
            grad_x = _cast(grad_x if g.dim() == 2 else grad_x.view(ctx.x_shape), ctx.x_dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = g2.sum(0)
        if ctx.needs_input_grad[3]:
            grad_b = _matvec_t(g2, s, b.dtype)
        return grad_x, None, grad_bias, grad_b, None


def onelora_forward(x: Tensor, weight: Tensor, bias: Tensor | None, b: Tensor) -> Tensor:
    """The fast path when anything needs a gradient, the reference formula otherwise (inference)."""
    if torch.is_grad_enabled() and (x.requires_grad or b.requires_grad or (bias is not None and bias.requires_grad)):
        return OneLoRAFunction.apply(x, weight, bias, b)
    return onelora_reference(x, weight, bias, b)


class OneLoRA(Adapter):
    conv2d = True

    def __init__(self, layer: BaseLayer, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(layer.out_features, device=layer.device, dtype=dtype))
        self.kernel_size, self.groups = layer.kernel_size, layer.groups

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return onelora_forward(x, weight, bias, self.b)

    def add_to_output(self, x: Tensor, y: Tensor) -> Tensor:
        """Any base (a quantized one): y + b (1ᵀx) in b's dtype, rounded once; autograd keeps s = 1ᵀx."""
        return torch.addcmul(y, x.sum(-1, keepdim=True, dtype=self.b.dtype), self.b).to(y.dtype)

    def add_to_conv_output(self, x: Tensor, y: Tensor, conv: Conv) -> Tensor:
        """ΔW = b 1ᵀ over in_channels × kh × kw: b times the input summed over its channels (per group) and
        the kernel window, s = conv(Σ_c x, 1). Autograd keeps s and Σ_c x: one value per pixel, not per channel."""
        summed = x.unflatten(-3, (self.groups, -1)).sum(-3, dtype=self.b.dtype)  # (..., groups, H, W)
        s = conv(summed, torch.ones(self.groups, 1, *self.kernel_size, device=x.device, dtype=self.b.dtype))
        if self.groups > 1:  # output channel o belongs to group o // (out / groups)
            s = s.repeat_interleave(self.b.shape[0] // self.groups, dim=-3)
        return torch.addcmul(y, s, self.b[:, None, None]).to(y.dtype)

    def delta_weight(self, weight: Tensor) -> Tensor:
        return self.b.float().view(-1, *[1] * (weight.dim() - 1)).expand(weight.shape)


class OneLoRARandom(Adapter):
    schema = {"seed": Option(int)}

    def __init__(self, layer: BaseLayer, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed + layer.index)  # each layer's v differs
        self.b = nn.Parameter(torch.zeros(layer.out_features, device=layer.device, dtype=dtype))
        v = torch.randn(layer.in_features, generator=g, dtype=dtype)
        self.register_buffer("v", v.to(layer.device))

    def add_to_output(self, x: Tensor, y: Tensor) -> Tensor:
        s = (x.to(self.v.dtype) @ self.v).unsqueeze(-1)
        return y + (s * self.b).to(y.dtype)

    def delta_weight(self, weight: Tensor) -> Tensor:
        return self.b.float()[:, None] * self.v.float()[None, :]


register("onelora", OneLoRA, doc="1LoRA: W0 x + b (1ᵀx), d per layer")
register("onelora_random", OneLoRARandom, doc="1LoRA with a fixed random compression vector (Table S1)")
