"""Training memory, estimated without weights or data: the dry run's memory lines (the paper's Figure 4 argument).

    est = estimate_training_memory(model_on_meta, batch_size=2, seq_len=512)   # bytes per process
    print("\\n".join(format_memory_lines(est)))

Terms (bytes, per process):
- weights: every parameter and buffer, in the storage dtypes of `apply_dtype_policy` (frozen weights in
  `weights_dtype`, what trains in `trainable_dtype`), by dtype;
- gradients: one per trainable parameter, in its dtype;
- optimizer: AdamW's two fp32 moments per trainable parameter (+ fp32 master copies where what trains is
  stored in lower precision);
- activations: the tensors autograd saves for backward in one forward of one micro-batch, measured by
  tracing the forward on the meta device under `torch.autograd.graph.saved_tensors_hooks` (bytes of the
  distinct storages saved, parameters and buffers excluded: they are counted above). On meta, autocast is
  emulated (matmul-like ops cast their floating inputs to the autocast dtype, parameter casts cached per
  forward, as autocast does) and attention runs the fused kernel GPUs use (it saves q, k, v, the output
  and the log-sum-exp, not the attention matrix). With activation checkpointing of the decoder layers:
  what is saved outside them, plus each layer's input, plus one layer's saved tensors (its recomputation);
- total: their sum. Sharding: ZeRO-2 divides gradients and optimizer states by the world size, FSDP
  full shard also the weights. Not counted: allocator fragmentation, kernels' workspaces, the
  transient gradient of the logits, communication buffers; real peaks are somewhat higher.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
GIB = 1024**3


def to_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).removeprefix("torch.").lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}") from None


def apply_dtype_policy(
    model: nn.Module,
    weights_dtype: str | torch.dtype | None = "bfloat16",
    trainable_dtype: str | torch.dtype | None = "float32",
) -> nn.Module:
    """Frozen floating parameters to `weights_dtype`, trainable ones to `trainable_dtype` (None: unchanged); in place.

    Buffers keep their dtype (LLaMA's RoPE frequencies stay fp32).
    """
    frozen, trainable = to_dtype(weights_dtype), to_dtype(trainable_dtype)
    for p in {id(p): p for p in model.parameters()}.values():
        target = trainable if p.requires_grad else frozen
        if target is not None and p.is_floating_point() and p.dtype != target:
            p.data = p.data.to(target)
    return model


# --- saved tensors --------------------------------------------------------------------------------
def _storage_key(t: Tensor) -> tuple[Any, int]:
    try:
        st = t.untyped_storage()
        return st._cdata, int(st.nbytes())
    except (RuntimeError, NotImplementedError, TypeError):  # tensors without a storage (subclasses)
        return id(t), t.numel() * t.element_size()


_LOWER_PRECISION = {
    F.linear, torch.matmul, Tensor.matmul, Tensor.__matmul__, Tensor.__rmatmul__, torch.mm, Tensor.mm, torch.bmm,
    Tensor.bmm, torch.baddbmm, Tensor.baddbmm, torch.addmm, Tensor.addmm, torch.addbmm, torch.einsum, F.conv1d,
    F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.prelu,
}  # fmt: skip


class MetaAutocast(TorchFunctionMode):
    """Autocast for meta tensors (torch.autocast does not run there) and GPU-like fused attention.

    Matmul-like functions get their fp32 floating inputs in `dtype` (casts of leaf tensors that require
    grad are cached for the forward, as autocast caches parameter casts); `scaled_dot_product_attention`
    runs the fused kernel (saving q, k, v, output and log-sum-exp) instead of meta's math fallback.
    """

    def __init__(self, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.dtype = dtype
        self.cache: dict[int, Tensor] = {}

    def _cast(self, x: Any) -> Any:
        if self.dtype is None or not isinstance(x, Tensor) or x.dtype != torch.float32:
            return x
        if x.is_leaf and x.requires_grad and torch.is_grad_enabled():  # (a cast made under no_grad has no graph)
            if id(x) not in self.cache:
                self.cache[id(x)] = x.to(self.dtype)
            return self.cache[id(x)]
        return x.to(self.dtype)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._attention(*[self._cast(a) for a in args], **{k: self._cast(v) for k, v in kwargs.items()})
        if func in _LOWER_PRECISION:
            args = tuple(self._cast(a) for a in args)
            kwargs = {k: self._cast(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)

    @staticmethod
    def _attention(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:
        if k.shape[-3] != q.shape[-3]:  # grouped-query attention: repeat the key/value heads
            rep = q.shape[-3] // k.shape[-3]
            k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
        )
        return out


def default_layer_classes() -> tuple[type, ...]:
    """The blocks activation checkpointing wraps: transformers' decoder/encoder layers."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer

        return (GradientCheckpointingLayer,)
    except ImportError:  # pragma: no cover (older transformers)
        return ()


@contextmanager
def _train_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was)


def saved_activations(
    model: nn.Module,
    inputs: dict[str, Any],
    autocast_dtype: str | torch.dtype | None = None,
    layer_classes: Sequence[type] | None = None,
    emulate: bool | None = None,
) -> dict[str, Any]:
    """Trace one training forward; bytes of the distinct storages saved for backward (parameters excluded).

    Returns `total`, `outside` (saved outside the layers), `per_layer` and `layer_inputs` (bytes of each
    layer's first input). `emulate` (default: on meta) runs `MetaAutocast`; otherwise, with an
    `autocast_dtype`, the real `torch.autocast` of the model's device.
    """
    dtype = to_dtype(autocast_dtype)
    params = {_storage_key(t)[0] for t in [*model.parameters(), *model.buffers()]}
    device = next(model.parameters()).device
    emulate = device.type == "meta" if emulate is None else emulate
    layers = [
        m
        for m in model.modules()
        if isinstance(m, tuple(layer_classes if layer_classes is not None else default_layer_classes()))
    ]
    current: list[int] = []
    per_layer = [0] * len(layers)
    layer_inputs = [0] * len(layers)
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
    if emulate:
        ctx: Any = MetaAutocast(dtype)
    elif dtype is not None:
        ctx = torch.autocast(device.type, dtype=dtype)
    else:
        ctx = torch.autocast(device.type, enabled=False)
    try:
        with _train_mode(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
            if hasattr(model, "config"):  # transformers: keyword inputs, the loss computed inside
                model(**inputs)
            else:  # timm and plain modules: the first tensor positionally
                model(next(v for v in inputs.values() if isinstance(v, Tensor)))
    finally:
        for h in handles:
            h.remove()
    total = outside + sum(per_layer)
    return {"total": total, "outside": outside, "per_layer": per_layer, "layer_inputs": layer_inputs}


# --- the estimate -------------------------------------------------------------------------------
def example_inputs(
    model: nn.Module, batch_size: int, seq_len: int | None = None, image_size: int | None = None
) -> dict[str, Any]:
    """A micro-batch of the right shapes on the model's device: token ids (causal LM) or images + labels."""
    device = next(model.parameters()).device
    config = getattr(model, "config", None)
    if seq_len is not None:
        vocab = getattr(config, "vocab_size", 2)
        ids = (
            torch.zeros(batch_size, seq_len, dtype=torch.long, device=device).random_(0, vocab)
            if device.type != "meta"
            else torch.empty(batch_size, seq_len, dtype=torch.long, device=device)
        )
        # use_cache=True: transformers' packed-sequence check (taken without a cache) reads values, which meta
        # tensors have not; the cache only references the key/value tensors attention saves anyway
        return {"input_ids": ids, "labels": ids, "use_cache": True}
    size = image_size or getattr(config, "image_size", 224)
    channels = getattr(config, "num_channels", 3)
    images = (
        torch.randn(batch_size, channels, size, size, device=device)
        if device.type != "meta"
        else torch.empty(batch_size, channels, size, size, device=device)
    )
    labels = torch.zeros(batch_size, dtype=torch.long, device=device)
    return {"pixel_values": images, "labels": labels}


def kind_inputs(kind: str, model: nn.Module, batch_size: int, cfg: Any) -> dict[str, Any] | None:
    """A training micro-batch on the meta device for the depth and diffusion tasks (shapes from the config)."""
    data = cfg.data.get("module") or {}
    if kind == "depth_estimator":
        size = data.get("input_size") or cfg.model.get("image_size") or 518
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return {"pixel_values": torch.empty(batch_size, 3, h, w, device="meta")}
    if kind == "diffusion_transformer":
        config = model.config
        side = int(config.sample_size)
        return {
            "hidden_states": torch.empty(batch_size, config.in_channels, side, side, device="meta"),
            "timestep": torch.empty(batch_size, dtype=torch.long, device="meta"),
            "class_labels": torch.empty(batch_size, dtype=torch.long, device="meta"),
        }
    return None


def estimate_training_memory(
    model: nn.Module,
    inputs: dict[str, Any] | None = None,
    *,
    batch_size: int = 1,
    seq_len: int | None = 512,
    image_size: int | None = None,
    weights_dtype: str | torch.dtype | None = "bfloat16",
    trainable_dtype: str | torch.dtype | None = "float32",
    autocast_dtype: str | torch.dtype | None = "bfloat16",
    gradient_checkpointing: bool = False,
    optimizer_states: int = 2,
    world_size: int = 1,
    sharding: str = "none",
) -> dict[str, int]:
    """Bytes per process to train `model` (best built on the meta device) on one micro-batch; see the module doc.

    A model not on meta is copied to meta first (its weights are not touched). `sharding`: "none", "zero2"
    (gradients and optimizer states split over `world_size`) or "full" (weights too).
    """
    if sharding not in ("none", "zero2", "full"):
        raise ValueError(f"sharding must be none, zero2 or full, got {sharding!r}")
    if next(model.parameters()).device.type != "meta":
        model = copy.deepcopy(model).to("meta")
    apply_dtype_policy(model, weights_dtype, trainable_dtype)
    params = list({id(p): p for p in model.parameters()}.values())
    out: dict[str, int] = {}
    for t in [*params, *model.buffers()]:
        key = f"weights_{str(t.dtype).removeprefix('torch.')}"
        out[key] = out.get(key, 0) + t.numel() * t.element_size()
    weights = sum(v for k, v in out.items() if k.startswith("weights_"))
    trainable = [p for p in params if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    gradients = sum(p.numel() * p.element_size() for p in trainable)
    optimizer = optimizer_states * 4 * n_trainable
    master = sum(4 * p.numel() for p in trainable if p.dtype != torch.float32)
    if inputs is None:
        inputs = example_inputs(model, batch_size, seq_len, image_size)
    acts = saved_activations(model, inputs, autocast_dtype)
    if gradient_checkpointing and acts["per_layer"]:
        activations = acts["outside"] + sum(acts["layer_inputs"]) + max(acts["per_layer"])
    else:
        activations = acts["total"]
    split = max(world_size, 1)
    if sharding in ("zero2", "full"):
        gradients, optimizer, master = gradients // split, optimizer // split, master // split
    if sharding == "full":
        weights = weights // split
        out = {k: v // split for k, v in out.items()}
    out.update(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer + master,
        activations=activations,
        activations_no_checkpointing=acts["total"],
        trainable_params=n_trainable,
        batch_size=int(next(iter(v for v in inputs.values() if isinstance(v, Tensor))).shape[0]),
        gradient_checkpointing=int(gradient_checkpointing),
        world_size=split,
    )
    out["total"] = weights + gradients + optimizer + master + activations
    return out


def estimate_from_config(model: nn.Module, cfg: Any) -> dict[str, int] | None:
    """The estimate for a composed config: its micro batch, sequence length / image size, dtypes, checkpointing
    and sharding. None where the model does not fit the task (a dry run of a bare model=: no batch to size)
    or its kind has no input builder here (causal LMs and image classifiers have).
    """
    kind = cfg.model.get("kind")
    if kind not in (cfg.task.get("model_kinds") or []):
        return None
    data = cfg.data.get("module") or {}
    precision = str(cfg.trainer.get("precision", "32-true"))
    autocast = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}.get(precision)
    weights, trainable = cfg.task.get("weights_dtype"), cfg.task.get("trainable_dtype", "float32")
    if precision in ("bf16-true", "16-true"):
        weights = trainable = "bfloat16" if precision.startswith("bf16") else "float16"
    strategy = cfg.trainer.get("strategy")
    target = str(strategy.get("_target_", "")) if hasattr(strategy, "get") else str(strategy or "")
    fsdp_ckpt = "fsdp" in target and (not hasattr(strategy, "get") or strategy.get("activation_checkpointing", True))
    from .batching import world_size

    batch_size = int(data.get("batch_size", 1) or 1)
    inputs, shape = None, {}
    if kind == "causal_lm":
        shape = {"seq_len": int(data.get("max_length", 512) or 512)}
    elif kind == "image_classifier":
        shape = {"seq_len": None, "image_size": int(cfg.model.get("image_size") or 224)}
    else:
        inputs = kind_inputs(kind, model, batch_size, cfg)
        if inputs is None:
            return None
    return estimate_training_memory(
        model,
        inputs,
        batch_size=batch_size,
        weights_dtype=weights,
        trainable_dtype=trainable,
        autocast_dtype=autocast,
        gradient_checkpointing=bool(cfg.model.get("gradient_checkpointing")) or fsdp_ckpt,
        world_size=world_size(cfg.trainer),
        sharding="full" if "fsdp" in target else "zero2" if "deepspeed" in target else "none",
        **shape,
    )


def _gib(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def format_memory_lines(estimate: dict[str, int] | None) -> list[str]:
    """Human lines for the dry run, then `memory_total_bytes=<int>` (before the contract lines)."""
    if estimate is None:
        return [
            "memory estimate: none (needs a model that fits the task, for its batch and precision, e.g. "
            "experiment=math_llama2_13b)"
        ]
    by_dtype = ", ".join(
        f"{k.removeprefix('weights_')} {_gib(v)}" for k, v in sorted(estimate.items()) if k.startswith("weights_")
    )
    ckpt = "on" if estimate.get("gradient_checkpointing") else "off"
    return [
        f"memory estimate per process (micro-batch {estimate.get('batch_size')}, activation checkpointing {ckpt}, "
        f"world size {estimate.get('world_size', 1)}):",
        f"  weights {_gib(estimate['weights'])} ({by_dtype}), gradients {_gib(estimate['gradients'])}, "
        f"optimizer {_gib(estimate['optimizer'])}, activations {_gib(estimate['activations'])}, total {_gib(estimate['total'])}",
        f"memory_total_bytes={estimate['total']}",
    ]
