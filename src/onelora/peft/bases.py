"""Base layers other than nn.Linear, and which kind a module is (`layer_kind`):

    linear     nn.Linear                          AdaptedLinear (layer.py)
    conv1d     transformers Conv1D (GPT-2)         AdaptedConv1D (a Conv1D): W stored (in, out), used as Wᵀ
    conv2d     nn.Conv2d                          AdaptedConv2d (an nn.Conv2d): 1LoRA, LoRA, BitFit
    quantized  an nn.Linear subclass with its own forward or a non-float / tensor-subclass weight
               (bitsandbytes Linear4bit / Linear8bitLt, torchao): AdaptedQuantized calls the layer's own
               forward and adds the adapter's term, as HF peft's generic quantized backend does.

Conv1D and Conv2d wrappers *are* their base class and share its parameters (names unchanged);
a quantized layer is kept whole as `base_layer` (its packed weight and state are its own business).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from ..errors import PeftError
from .layer import AdaptedLayer, AdaptedLinear, Adapter, BaseLayer, ScaleOutput, as_compute


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

        __repr__ = nn.Module.__repr__  # Conv1D's own hides the children (the adapter)

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
