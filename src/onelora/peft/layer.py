"""The adapted layers: a frozen base layer with an optional adapter, trainable bias and scale.

    y = γ ⊙ (adapter(x; W0, β))        adapter absent: adapter(x; W0, β) = W0 x + β

`AdaptedLinear` (here) *is* an nn.Linear sharing the original `weight` and `bias`
parameters, so the parameter names of the model are unchanged (`q_proj.weight` stays
`q_proj.weight`): a pretrained checkpoint still loads into the adapted model. The other
base layer kinds (Conv1D, Conv2d, quantized linears) have their wrappers in `bases.py`.

Dtype policy (as HF peft's `autocast_adapter_dtype=True`): every parameter a wrapper
creates or unfreezes is stored in fp32, whatever the base weight's dtype; the forward
casts them to the input's dtype, so gradients accumulate in fp32 master copies and a
bf16 model stays bf16 in its activations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Conv = Callable[[Tensor, Tensor], Tensor]  # the base convolution's geometry applied to (input, weight)


@dataclass
class BaseLayer:
    """What an adapter needs to know of the layer it adapts; `weight` is (out, in[, kh, kw]) or None if quantized."""

    kind: str
    in_features: int
    out_features: int
    weight: Tensor | None
    device: torch.device
    dtype: torch.dtype  # the dtype the base layer computes in
    index: int = 0  # position among the adapted layers (seeds per-layer random parts)
    kernel_size: tuple[int, ...] = ()
    groups: int = 1


class Adapter(nn.Module):
    """One method's trainable part for one layer.

    Subclasses take `(layer: BaseLayer, **options)` in `__init__` (their options are what the method
    accepts) and implement `add_to_output(x, y)`: the base output `y` plus the adapter's term, rounded
    once to y's dtype (how a quantized base is adapted), and `delta_weight(weight)`: ΔW with
    `W0 + ΔW` the merged weight. `forward(x, weight, bias)` is the fast path on a float weight.
    Methods with parts shared across layers implement `shared(layers, **options)`, whose result
    is passed to every constructor as `shared=`. `uses_weight`: the term needs W0 itself (DoRA),
    so no quantized base; `conv2d`: implements `add_to_conv_output` for nn.Conv2d bases.
    """

    uses_weight = False
    conv2d = False

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self.add_to_output(x, F.linear(x, weight, bias))

    def add_to_output(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def add_to_conv_output(self, x: Tensor, y: Tensor, conv: Conv) -> Tensor:
        raise NotImplementedError

    def delta_weight(self, weight: Tensor) -> Tensor:
        raise NotImplementedError


class ScaleOutput(torch.autograd.Function):
    """z = y ⊙ γ keeping z for backward instead of y: grad_γ = Σ g ⊙ z / γ, grad_y = g ⊙ γ.

    The layer's output z is usually kept by the next op anyway (attention keeps q, k, v; GELU its input), so
    DiffFit's scale costs no activation of its own there, where `y * γ` in autograd would keep y as well.
    γ starts at 1 and trains slowly; a γ entry of exactly 0 would make its gradient undefined.
    """

    @staticmethod
    def forward(ctx, y: Tensor, gamma: Tensor) -> Tensor:  # type: ignore[override]
        z = y * gamma
        ctx.save_for_backward(z, gamma)
        return z

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        z, gamma = ctx.saved_tensors
        grad_gamma = (g * z).reshape(-1, z.shape[-1]).sum(0, dtype=torch.float32) / gamma.float()
        return g * gamma, grad_gamma.to(gamma.dtype)


def as_compute(t: Tensor | None, like: Tensor) -> Tensor | None:
    """Cast a (possibly fp32 master) parameter to the dtype the activations use."""
    return t if t is None or t.dtype == like.dtype else t.to(like.dtype)


# ------------------------------------------------------------------------------ the wrappers
class AdaptedLayer(nn.Module):
    """What every wrapper shares: the adapter, trainable bias and γ, switching off, merging in fp32."""

    adapter: Adapter | None
    gamma: nn.Parameter | None
    peft_enabled = True  # `disable_peft` sets it False on the instance: the frozen base runs alone

    def _init_extras(
        self, bias: Tensor | None, adapter: Adapter | None, train_bias: bool, train_gamma: bool, dtype: torch.dtype
    ) -> None:
        device = self.base_weight().device
        if train_bias:  # a new fp32 master copy; the original values stay (not saved) for `disable_peft`
            self.register_buffer("frozen_bias", None if bias is None else bias.detach(), persistent=False)
            new = torch.zeros(self.out_features, device=device) if bias is None else bias.detach().clone()
            bias = nn.Parameter(new.to(dtype), requires_grad=True)
        elif bias is not None:
            bias.requires_grad_(False)
        self.bias = bias
        self.adapter = adapter
        self.gamma = nn.Parameter(torch.ones(self.out_features, device=device, dtype=dtype)) if train_gamma else None

    def base_weight(self) -> Tensor:
        return self.weight

    def base_bias(self) -> Tensor | None:
        """The bias the frozen base model had (BitFit trains a copy)."""
        return self.frozen_bias if "frozen_bias" in self._buffers else self.bias

    def _linear_forward(self, x: Tensor, weight: Tensor) -> Tensor:
        """The layer as y = W x + β with W = `weight` (out, in), adapter and γ on top."""
        if not self.peft_enabled:
            return F.linear(x, weight, as_compute(self.base_bias(), x))
        bias = as_compute(self.bias, x)
        y = F.linear(x, weight, bias) if self.adapter is None else self.adapter(x, weight, bias)
        if self.gamma is not None:
            y = ScaleOutput.apply(y, as_compute(self.gamma, y))
        return y

    @torch.no_grad()
    def merged_weight_bias(self, w0: Tensor) -> tuple[Tensor, Tensor | None]:
        """W = γ(W0 + ΔW), b = γβ in fp32, with W0 in nn.Linear / nn.Conv2d orientation."""
        w = w0.float()
        if self.adapter is not None:
            w = w + self.adapter.delta_weight(w0).float()
        b = None if self.bias is None else self.bias.float()
        if self.gamma is not None:
            g = self.gamma.float()
            w = w * g.view(-1, *[1] * (w.dim() - 1))
            b = None if b is None else b * g
        return w, b

    def extra_repr(self) -> str:
        parts = [super().extra_repr()]
        if self.gamma is not None:
            parts.append("gamma")
        if self.bias is not None and self.bias.requires_grad:
            parts.append("trainable_bias")
        return ", ".join(p for p in parts if p)


class AdaptedLinear(AdaptedLayer, nn.Linear):
    def __init__(
        self,
        base: nn.Linear,
        adapter: Adapter | None = None,
        train_bias: bool = False,
        train_gamma: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self._init_extras(base.bias, adapter, train_bias, train_gamma, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self._linear_forward(x, self.weight)

    @torch.no_grad()
    def merged(self, dequantize: bool = False) -> nn.Linear:
        """A plain `nn.Linear` with the same outputs."""
        w, b = self.merged_weight_bias(self.weight)
        out = nn.Linear(
            self.in_features, self.out_features, bias=b is not None, device=w.device, dtype=self.weight.dtype
        )
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
        return out.requires_grad_(False)
