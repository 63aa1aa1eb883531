"""The activations a training forward saves for backward, traced without weights, data or an accelerator.

    acts = saved_activations(model_on_meta, inputs_on_meta, "bfloat16", device_type="cuda")

The model and its inputs are copied to fake tensors (`torch._subclasses.FakeTensorMode`: shapes, dtypes and
a device, no memory) of `device_type`, and one forward runs under that device's own autocast, with
`torch.autograd.graph.saved_tensors_hooks` recording every storage autograd keeps. So the dtype policy is
torch's own: on "cuda", CUDA autocast's lower-precision, fp32, fp32-with-dtype and promote op lists (as
registered for the AutocastCUDA dispatch key), which torch runs on fake CUDA tensors although no GPU is
present; device-dependent kernels follow the device too (CUDA's dropout keeps a 1-byte mask).

One thing fake tensors cannot answer is which fused attention kernel a real GPU picks (the choice queries the
hardware): `AttentionKernels` makes it as torch's sdp_utils does on an A100/H100 (flash attention for
fp16/bf16 without a mask, memory-efficient attention otherwise, the math fallback where neither applies),
and on "cpu" asks torch's own CPU choice. Each fused kernel saves q, k, v, the output and the log-sum-exp,
never the attention matrix.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..models.dtypes import to_dtype


# --- fake copies -------------------------------------------------------------------------------------
def _fake_mode() -> Any:
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


def fake_copy(model: nn.Module, mode: Any, device_type: str) -> nn.Module:
    """A copy of `model` whose parameters and buffers are fake tensors on `device_type` (ties kept)."""
    model = copy.deepcopy(model) if next(model.parameters()).device.type == "meta" else copy.deepcopy(model).to("meta")
    memo: dict[int, Tensor] = {}

    def fake(t: Tensor, parameter: bool) -> Tensor:
        if id(t) not in memo:
            with mode:
                f = torch.empty(t.shape, dtype=t.dtype, device=device_type)
            memo[id(t)] = nn.Parameter(f, requires_grad=t.requires_grad) if parameter else f
        return memo[id(t)]

    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = fake(p, True)
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = fake(b, False)
    return model


def fake_inputs(inputs: dict[str, Any], mode: Any, device_type: str) -> dict[str, Any]:
    """Tensors of `inputs` as fake tensors of the same shape and dtype on `device_type` (other values kept)."""
    out: dict[str, Any] = {}
    with mode:
        for k, v in inputs.items():
            if isinstance(v, Tensor):
                f = torch.zeros(v.shape, dtype=v.dtype, device=device_type)
                out[k] = f.requires_grad_(v.requires_grad) if v.is_floating_point() else f
            else:
                out[k] = v
    return out


# --- autocast -----------------------------------------------------------------------------------------
@contextmanager
def device_autocast(device_type: str, dtype: torch.dtype | None) -> Iterator[None]:
    """The device's own autocast (its op lists), also for CUDA when no GPU is present (fake CUDA tensors).

    `torch.autocast("cuda")` turns itself off without a GPU, so this sets the same state directly, as its
    __enter__ does: enabled, dtype, cache on, one nesting level (the cache is cleared on exit).
    """
    if dtype is None:
        with torch.autocast(device_type, enabled=False) if device_type == "cpu" else nullcontext():
            yield
        return
    prev = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
    prev_cache = torch.is_autocast_cache_enabled()
    torch.set_autocast_enabled(device_type, True)
    torch.set_autocast_dtype(device_type, dtype)
    torch.set_autocast_cache_enabled(True)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled(device_type, prev[0])
        torch.set_autocast_dtype(device_type, prev[1])
        torch.set_autocast_cache_enabled(prev_cache)


# --- attention ------------------------------------------------------------------------------------------
def cuda_attention_kernel(q: Tensor, attn_mask: Tensor | None) -> str:
    """The kernel torch's CUDA SDPA picks on an A100/H100 (priority flash > memory-efficient > math).

    Flash: fp16/bf16, no explicit mask, head dim ≤ 256. Memory-efficient: fp16/bf16/fp32, a mask allowed,
    head dim a multiple of 8 (fp16/bf16) or 4 (fp32).
    """
    head_dim = q.shape[-1]
    low = q.dtype in (torch.float16, torch.bfloat16)
    if low and attn_mask is None and head_dim <= 256:
        return "flash"
    if q.dtype in (torch.float16, torch.bfloat16, torch.float32) and head_dim % (8 if low else 4) == 0:
        return "efficient"
    return "math"


def cpu_attention_kernel(q: Tensor, k: Tensor, attn_mask: Tensor | None, dropout_p: float, is_causal: bool) -> str:
    """torch's own CPU choice, asked on one-token real tensors of the same dtype and head dims."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():  # real tensors: a fake one would get the meta answer (math)
        probe = torch.zeros(1, 1, 1, q.shape[-1], dtype=q.dtype)
        probe_k = torch.zeros(1, 1, 1, k.shape[-1], dtype=q.dtype)
        mask = None if attn_mask is None else torch.zeros(1, 1, 1, 1, dtype=attn_mask.dtype)
        choice = torch._fused_sdp_choice(
            probe, probe_k, probe_k, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal
        )
    return "flash" if choice == 1 else "math"


class AttentionKernels(TorchFunctionMode):
    """`scaled_dot_product_attention` on fake tensors runs the fused kernel the real device would choose."""

    def __init__(self, device_type: str) -> None:
        super().__init__()
        self.device_type = device_type

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self.attention(*args, **kwargs)
        return func(*args, **kwargs)

    def attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:
        if torch.is_autocast_enabled(self.device_type):  # SDPA is on both autocast lists: lower precision
            low = torch.get_autocast_dtype(self.device_type)
            q, k, v = (t.to(low) if t.dtype == torch.float32 else t for t in (q, k, v))
        if k.shape[-3] != q.shape[-3]:  # grouped-query attention: repeat the key/value heads
            rep = q.shape[-3] // k.shape[-3]
            k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
        if attn_mask is not None:  # SDPA turns a bool mask into an additive one of q's dtype (a new tensor)
            attn_mask = (
                torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device)
                if attn_mask.dtype == torch.bool
                else attn_mask.to(q.dtype)
            )
        with torch.autocast(self.device_type, enabled=False) if self.device_type == "cpu" else nullcontext():
            if self.device_type == "cuda":
                kernel = cuda_attention_kernel(q, attn_mask)
                if kernel == "flash":
                    return torch.ops.aten._scaled_dot_product_flash_attention(
                        q, k, v, dropout_p, is_causal, False, scale=scale
                    )[0]
                if kernel == "efficient":
                    return torch.ops.aten._scaled_dot_product_efficient_attention(
                        q, k, v, attn_mask, True, dropout_p, is_causal, scale=scale
                    )[0]
            elif self.device_type == "cpu" and cpu_attention_kernel(q, k, attn_mask, dropout_p, is_causal) == "flash":
                return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                    q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
                )[0]
            return torch.ops.aten._scaled_dot_product_attention_math(
                q, k, v, attn_mask, dropout_p, is_causal, scale=scale
            )[0]


# --- the layers activation checkpointing wraps -------------------------------------------------------------
def checkpointed_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks each library's checkpointing switch wraps: transformers' `GradientCheckpointingLayer`s,
    diffusers' `transformer_blocks`, timm's `blocks`; [] where none is found (checkpointing then saves nothing)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer

        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    except ImportError:  # pragma: no cover (older transformers)
        layers = []
    if layers:
        return layers
    for attr in ("transformer_blocks", "blocks"):  # diffusers DiT / timm ViT
        blocks = getattr(model, attr, None)
        if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks):
            return list(blocks)
    return []


# --- the trace ----------------------------------------------------------------------------------------------
def _storage_key(t: Tensor) -> tuple[Any, int]:
    try:
        st = t.untyped_storage()
        return st._cdata, int(st.nbytes())
    except (RuntimeError, NotImplementedError, TypeError):  # tensors without a storage (subclasses)
        return id(t), t.numel() * t.element_size()


@contextmanager
def _train_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was)


def run_forward(model: nn.Module, inputs: dict[str, Any]) -> Any:
    """transformers and diffusers: keyword inputs (transformers computes its loss inside); timm: the first tensor."""
    if hasattr(model, "config"):
        return model(**inputs)
    return model(next(v for v in inputs.values() if isinstance(v, Tensor)))


def saved_activations(
    model: nn.Module,
    inputs: dict[str, Any],
    autocast_dtype: str | torch.dtype | None = None,
    layer_classes: Sequence[type] | None = None,
    device_type: str | None = None,
) -> dict[str, Any]:
    """Trace one training forward; bytes of the distinct storages saved for backward (parameters excluded).

    Returns `total`, `outside` (saved outside the checkpointable blocks), `per_layer`, `layer_inputs` (bytes of
    each block's first input) and `layers` (how many blocks). `device_type`: the device whose autocast and
    kernels are traced (default: the model's, "cuda" for a model on meta), on fake tensors; a model on a real
    device is traced on its real tensors when `device_type` is its own (a measurement, not an estimate).
    """
    dtype = to_dtype(autocast_dtype)
    own = next(model.parameters()).device
    device_type = device_type or ("cuda" if own.type == "meta" else own.type)
    real = own.type == device_type
    mode = None if real else _fake_mode()
    if mode is not None:
        model, inputs = fake_copy(model, mode, device_type), fake_inputs(inputs, mode, device_type)
    params = {_storage_key(t)[0] for t in [*model.parameters(), *model.buffers()]}
    if layer_classes is not None:
        layers = [m for m in model.modules() if isinstance(m, tuple(layer_classes))]
    else:
        layers = checkpointed_blocks(model)
    current: list[int] = []
    per_layer, layer_inputs = [0] * len(layers), [0] * len(layers)
    outside = 0
    seen: set[Any] = set()
    keep: list[Tensor] = []  # hold what was saved so storages (and their keys) stay alive

    def pack(t: Tensor) -> Tensor:
        nonlocal outside
        key, nbytes = _storage_key(t)
        if key not in params and key not in seen:
            seen.add(key)
            keep.append(t)
            if current:
                per_layer[current[-1]] += nbytes
            else:
                outside += nbytes
        return t

    handles = []
    for i, layer in enumerate(layers):

        def pre(mod: nn.Module, args: tuple, kwargs: dict, i: int = i) -> None:
            x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, Tensor)), None)
            if isinstance(x, Tensor) and not current:
                layer_inputs[i] = x.numel() * x.element_size()
            current.append(i)

        def post(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            current.pop()

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(post, with_kwargs=True))
    try:
        with (
            mode if mode is not None else nullcontext(),
            warnings.catch_warnings(),
            _train_mode(model),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            device_autocast(device_type, dtype) if mode is not None else _real_autocast(device_type, dtype),
            AttentionKernels(device_type) if mode is not None else nullcontext(),
        ):
            # model code enters torch.autocast("cuda", enabled=False) (e.g. RoPE): without a GPU that warns
            warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
            run_forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
    total = outside + sum(per_layer)
    return {
        "total": total,
        "outside": outside,
        "per_layer": per_layer,
        "layer_inputs": layer_inputs,
        "layers": len(layers),
    }


def _real_autocast(device_type: str, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else torch.autocast(device_type, enabled=False)
