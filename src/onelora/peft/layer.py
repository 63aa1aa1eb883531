"""The adapted layers: a frozen base layer with an optional adapter, trainable bias and scale.

    y = γ ⊙ (adapter(x; W0, β))        adapter absent: adapter(x; W0, β) = W0 x + β

Base layer kinds (`layer_kind`), each with its wrapper:
    linear     nn.Linear                          AdaptedLinear (an nn.Linear)
    conv1d     transformers Conv1D (GPT-2)         AdaptedConv1D (a Conv1D): W stored (in, out), used as Wᵀ
    conv2d     nn.Conv2d                          AdaptedConv2d (an nn.Conv2d): 1LoRA, LoRA, BitFit
    quantized  an nn.Linear subclass with its own forward or a non-float / tensor-subclass weight
               (bitsandbytes Linear4bit / Linear8bitLt, torchao): AdaptedQuantized calls the layer's own
               forward and adds the adapter's term, as HF peft's generic quantized backend does.

The first three *are* their base class and share the original `weight` and `bias`
parameters, so the parameter names of the model are unchanged (`q_proj.weight` stays
`q_proj.weight`): a pretrained checkpoint still loads into the adapted model. A quantized
layer is kept whole as `base_layer` (its packed weight and state are its own business).

Dtype policy (as HF peft's `autocast_adapter_dtype=True`): every parameter a wrapper
creates or unfreezes is stored in fp32, whatever the base weight's dtype; the forward
casts them to the input's dtype, so gradients accumulate in fp32 master copies and a
bf16 model stays bf16 in its activations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PeftError

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


# ------------------------------------------------------------------------------ layer kinds
def _is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D, recognised without importing transformers."""
    return any(c.__name__ == "Conv1D" and c.__module__.startswith("transformers") for c in type(module).__mro__)


def _plain_float(w: object) -> bool:
    return type(w) in (nn.Parameter, Tensor) and w.dtype.is_floating_point  # type: ignore[attr-defined]


def layer_kind(module: nn.Module) -> str | None:
    """linear, conv1d, conv2d or quantized (see the module doc); None for anything else, adapted layers included."""
    if isinstance(module, AdaptedLayer):
        return None
    if _is_conv1d(module):
        return "conv1d" if _plain_float(module.weight) else None
    if isinstance(module, nn.Linear):
        if type(module).forward is nn.Linear.forward and _plain_float(module.weight):
            return "linear"
        return "quantized"
    if isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward and _plain_float(module.weight):
        return "conv2d"
    return None


def describe(module: nn.Module, index: int = 0) -> BaseLayer:
    """The BaseLayer of a supported `module`; `index`: its position among the adapted layers."""
    kind = layer_kind(module)
    w = module.weight
    if kind == "conv1d":
        return BaseLayer(kind, module.nx, module.nf, w.T, w.device, w.dtype, index)
    if kind == "conv2d":
        return BaseLayer(
            kind,
            module.in_channels,
            module.out_channels,
            w,
            w.device,
            w.dtype,
            index,
            module.kernel_size,
            module.groups,
        )
    if kind == "quantized":
        dtype = getattr(module, "compute_dtype", None) or next(
            (t.dtype for t in (module.bias, w) if t is not None and t.dtype.is_floating_point), torch.float32
        )
        return BaseLayer(kind, module.in_features, module.out_features, None, w.device, dtype, index)
    return BaseLayer("linear", module.in_features, module.out_features, w, w.device, w.dtype, index)


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


@functools.cache
def _conv1d_wrapper() -> type[AdaptedLayer]:
    """AdaptedConv1D subclasses transformers' Conv1D, built on first use (transformers is imported by then)."""
    from transformers.pytorch_utils import Conv1D

    class AdaptedConv1D(AdaptedLayer, Conv1D):
        """GPT-2's Conv1D, `y = x W + β` with W (in, out): adapted as the nn.Linear with weight Wᵀ (a view)."""

        def __init__(self, base, adapter=None, train_bias=False, train_gamma=False, dtype=torch.float32) -> None:
            nn.Module.__init__(self)
            self.nf, self.nx = base.nf, base.nx
            self.in_features, self.out_features = base.nx, base.nf
            self.weight = base.weight
            self.weight.requires_grad_(False)
            self._init_extras(base.bias, adapter, train_bias, train_gamma, dtype)

        def forward(self, x: Tensor) -> Tensor:
            return self._linear_forward(x, self.weight.T)

        @torch.no_grad()
        def merged(self, dequantize: bool = False) -> Conv1D:
            w, b = self.merged_weight_bias(self.weight.T)
            out = Conv1D(self.nf, self.nx).to(device=w.device, dtype=self.weight.dtype)
            out.weight.copy_(w.T)
            if b is None:
                out.bias.zero_()
            else:
                out.bias.copy_(b)
            return out.requires_grad_(False)

        def extra_repr(self) -> str:
            return f"nf={self.nf}, nx={self.nx}, " + super().extra_repr()

    AdaptedConv1D.__module__, AdaptedConv1D.__qualname__ = __name__, "AdaptedConv1D"
    return AdaptedConv1D


class AdaptedConv2d(AdaptedLayer, nn.Conv2d):
    """nn.Conv2d with 1LoRA (ΔW = b 1ᵀ over in_channels × kh × kw), LoRA or a trainable bias."""

    def __init__(
        self,
        base: nn.Conv2d,
        adapter: Adapter | None = None,
        train_bias: bool = False,
        train_gamma: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        nn.Module.__init__(self)
        for attr in (
            "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "transposed",
            "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice",
        ):  # fmt: skip
            setattr(self, attr, getattr(base, attr))
        self.in_features, self.out_features = base.in_channels, base.out_channels
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self._init_extras(base.bias, adapter, train_bias, train_gamma, dtype)

    def conv(self, x: Tensor, weight: Tensor) -> Tensor:
        """The base's geometry (stride, padding and its mode, dilation, groups) on another weight, no bias."""
        return self._conv_forward(x, weight, None)

    def forward(self, x: Tensor) -> Tensor:
        if not self.peft_enabled:
            return self._conv_forward(x, self.weight, as_compute(self.base_bias(), x))
        y = self._conv_forward(x, self.weight, as_compute(self.bias, x))
        return y if self.adapter is None else self.adapter.add_to_conv_output(x, y, self.conv)

    @torch.no_grad()
    def merged(self, dequantize: bool = False) -> nn.Conv2d:
        w, b = self.merged_weight_bias(self.weight)
        out = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, b is not None, self.padding_mode, device=w.device, dtype=self.weight.dtype,
        )  # fmt: skip
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
        return out.requires_grad_(False)


class AdaptedQuantized(AdaptedLayer):
    """A quantized (or otherwise custom) nn.Linear: y = base(x) (its own forward) + the adapter's term.

    A trainable bias on such a layer is an fp32 copy β of its bias (zeros if none); the layer's own output
    already holds β0, so β − β0 is added. Merging needs the float weight: `merged(dequantize=True)`.
    """

    def __init__(
        self,
        base: nn.Linear,
        adapter: Adapter | None = None,
        train_bias: bool = False,
        train_gamma: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        base.requires_grad_(False)
        self._init_extras(base.bias if train_bias else None, adapter, train_bias, train_gamma, dtype)

    def base_weight(self) -> Tensor:
        return self.base_layer.weight

    def forward(self, x: Tensor) -> Tensor:
        y = self.base_layer(x)
        if not self.peft_enabled:
            return y
        if self.bias is not None:
            shift = self.bias if self.frozen_bias is None else self.bias - self.frozen_bias.to(self.bias.dtype)
            y = (y + shift).to(y.dtype)
        if self.adapter is not None:
            y = self.adapter.add_to_output(x, y)
        if self.gamma is not None:
            y = ScaleOutput.apply(y, as_compute(self.gamma, y))
        return y

    @torch.no_grad()
    def dequantized_weight(self) -> Tensor:
        """W0 as the layer computes it: its own forward on the identity, bias removed (exact for weight-only
        quantization: every output is one dequantized weight times 1)."""
        base, k = self.base_layer, self.in_features
        bias, base.bias = base.bias, None
        try:
            dev = self.base_weight().device
            cols = [base(torch.eye(k, device=dev)[i : i + 1024]) for i in range(0, k, 1024)]
        finally:
            base.bias = bias
        return torch.cat(cols).T

    @torch.no_grad()
    def merged(self, dequantize: bool = False) -> nn.Linear:
        kind = type(self.base_layer).__name__
        if not dequantize:
            raise PeftError(
                f"cannot merge an adapter into the quantized {kind}: its weight is not a float matrix; keep the "
                "adapter unmerged, or merge_peft(model, dequantize=True) for plain (larger) nn.Linear layers"
            )
        w0 = self.dequantized_weight()
        w, b = self.merged_weight_bias(w0)
        if self.bias is None and self.base_layer.bias is not None:
            b = self.base_layer.bias.float() * (1 if self.gamma is None else self.gamma.float())
        out = nn.Linear(self.in_features, self.out_features, bias=b is not None, device=w.device, dtype=w0.dtype)
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
        return out.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()


def __getattr__(name: str) -> type:
    """`onelora.peft.layer.AdaptedConv1D` (pickling finds it here once built)."""
    if name == "AdaptedConv1D":
        return _conv1d_wrapper()
    raise AttributeError(name)


def wrapper_class(kind: str) -> type[AdaptedLayer]:
    return {
        "linear": AdaptedLinear,
        "conv2d": AdaptedConv2d,
        "quantized": AdaptedQuantized,
    }.get(kind) or _conv1d_wrapper()
