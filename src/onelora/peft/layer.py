"""`AdaptedLinear`: a frozen `nn.Linear` with an optional adapter, trainable bias and scale.

    y = γ ⊙ (adapter(x; W0, β))        adapter absent: adapter(x; W0, β) = W0 x + β

`AdaptedLinear` *is* an `nn.Linear` that shares the original layer's `weight` and
`bias` parameters, so the parameter names of the model are unchanged (`q_proj.weight`
stays `q_proj.weight`): a pretrained checkpoint still loads into the adapted model,
and code that reads `layer.weight` keeps working. The trainable parts are the extra
sub-module `adapter`, and the parameters `bias` (BitFit, trained or added as zeros
where the layer had none) and `gamma` (DiffFit's scale, initialised to 1).

Dtype policy (as HF peft's `autocast_adapter_dtype=True`): every parameter this
wrapper creates or unfreezes is stored in fp32, whatever the base weight's dtype;
the forward casts them to the input's dtype, so gradients accumulate in fp32 master
copies and a bf16 model stays bf16 in its activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Adapter(nn.Module):
    """One method's trainable part for one linear layer.

    Subclasses take `(layer, **options)` in `__init__` (their options are what the
    method accepts), and implement `forward(x, weight, bias)` returning the full layer
    output and `delta_weight(weight)` returning ΔW with `W0 + ΔW` the merged weight.
    Methods with parts shared across layers implement `shared(layers, **options)`,
    whose result is passed to every constructor as `shared=`.
    """

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
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


class AdaptedLinear(nn.Linear):
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
        bias = base.bias
        if train_bias:
            new = torch.zeros(self.out_features, device=base.weight.device) if bias is None else bias.detach()
            bias = nn.Parameter(new.to(dtype), requires_grad=True)
        elif bias is not None:
            bias.requires_grad_(False)
        self.bias = bias
        self.adapter = adapter
        self.gamma = (
            nn.Parameter(torch.ones(self.out_features, device=base.weight.device, dtype=dtype)) if train_gamma else None
        )

    def forward(self, x: Tensor) -> Tensor:
        bias = as_compute(self.bias, x)
        if self.adapter is None:
            y = F.linear(x, self.weight, bias)
        else:
            y = self.adapter(x, self.weight, bias)
        if self.gamma is not None:
            y = ScaleOutput.apply(y, as_compute(self.gamma, y))
        return y

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` with the same outputs: W = γ(W0 + ΔW), b = γβ (fp32 math)."""
        w = self.weight.float()
        if self.adapter is not None:
            w = w + self.adapter.delta_weight(self.weight).float()
        b = None if self.bias is None else self.bias.float()
        if self.gamma is not None:
            g = self.gamma.float()
            w = w * g[:, None]
            b = None if b is None else b * g
        out = nn.Linear(
            self.in_features, self.out_features, bias=b is not None, device=w.device, dtype=self.weight.dtype
        )
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
        out.requires_grad_(False)
        return out

    def extra_repr(self) -> str:
        parts = [super().extra_repr()]
        if self.gamma is not None:
            parts.append("gamma")
        if self.bias is not None and self.bias.requires_grad:
            parts.append("trainable_bias")
        return ", ".join(parts)
