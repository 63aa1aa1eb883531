"""Training memory, estimated without weights or data: the dry run's memory lines (the paper's Figure 4 argument).

    est = estimate_training_memory(model_on_meta, batch_size=2, seq_len=512)   # bytes per process
    print("\\n".join(format_memory_lines(est)))

Terms (bytes, per process):
- weights: every parameter and buffer, in the storage dtypes the run really uses (`apply_dtype_policy`: frozen
  weights in `weights_dtype`, what trains in `trainable_dtype`; DeepSpeed casts the whole module to bf16), by dtype;
- gradients: one per trainable parameter, in its dtype;
- optimizer: AdamW's two fp32 moments per trainable parameter (+ fp32 master copies where what trains is
  stored in lower precision);
- activations: the tensors autograd saves for backward in one forward of one micro-batch, traced on fake tensors
  of the target device under its own autocast (`onelora.costs.memory_trace`: CUDA's op lists, CUDA's 1-byte dropout
  masks, the fused attention kernel the GPU picks), bytes of the distinct storages saved, parameters and buffers
  excluded. With activation checkpointing (transformers' layers, diffusers' `transformer_blocks`, timm's
  `blocks`): what is saved outside them, plus each block's input, plus one block's saved tensors (its
  recomputation);
- gathered (FSDP full shard): the unsharded parameters resident at once: the root unit (embeddings, head,
  final norm; FSDP keeps it gathered from forward to backward) and two layer units (the current one and the
  prefetched one, `limit_all_gathers`);
- buckets (DeepSpeed ZeRO-2 with `overlap_comm`): its two gradient buckets of `reduce_bucket_size` elements in
  the module's dtype;
- frozen models: modules the task keeps on the device beside the model (the DiT's VAE);
- total: their sum. Sharding: ZeRO-2 divides gradients and optimizer states by the world size, FSDP
  full shard also the weights. Not counted: allocator fragmentation, kernels' workspaces, transient tensors
  (the logits' gradient, the VAE's encoder activations under no_grad), the CUDA context.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ..models.dtypes import apply_dtype_policy, to_dtype
from .memory_trace import checkpointed_blocks, saved_activations  # noqa: F401  (saved_activations re-exported)

GIB = 1024**3


# --- the estimate -------------------------------------------------------------------------------
def example_inputs(
    model: nn.Module, batch_size: int, seq_len: int | None = None, image_size: int | None = None
) -> dict[str, Any]:
    """A micro-batch of the right shapes on the model's device: token ids and labels (causal LM) or images."""
    device = next(model.parameters()).device
    config = getattr(model, "config", None)
    if seq_len is not None:
        vocab = getattr(config, "vocab_size", 2)
        ids = (
            torch.zeros(batch_size, seq_len, dtype=torch.long, device=device).random_(0, vocab)
            if device.type != "meta"
            else torch.empty(batch_size, seq_len, dtype=torch.long, device=device)
        )
        # with an attention mask (training batches are padded), as the task calls the model: transformers then
        # passes an explicit mask to attention (GPU: the memory-efficient kernel); no cache in training
        mask = torch.ones(batch_size, seq_len, dtype=torch.long, device=device)
        return {"input_ids": ids, "attention_mask": mask, "labels": ids, "use_cache": False}
    size = image_size or getattr(config, "image_size", 224)
    channels = getattr(config, "num_channels", 3)
    images = (
        torch.randn(batch_size, channels, size, size, device=device)
        if device.type != "meta"
        else torch.empty(batch_size, channels, size, size, device=device)
    )
    return {"pixel_values": images}  # the classification task computes its loss outside the model


def depth_input_hw(cfg: Any) -> tuple[int, int]:
    """The network input size of a depth experiment's training images, from the data's own function."""
    from ..data.depth import dataset_input_hw, input_hw

    data = cfg.data.get("module") or {}
    size = data.get("input_size", cfg.model.get("image_size") or 518)
    size = size if size is None or isinstance(size, int) else [int(x) for x in size]
    policy = {k: data[k] for k in ("keep_aspect", "multiple_of", "resize_method") if data.get(k) is not None}
    dataset = data.get("dataset")
    if dataset is None or size is None:  # no data set named: a square model-sized input
        side = int(cfg.model.get("image_size") or 518)
        return input_hw(side, side, size, **policy) if size is not None else (side, side)
    return dataset_input_hw(str(dataset), size, **policy)


def kind_inputs(kind: str, model: nn.Module, batch_size: int, cfg: Any) -> dict[str, Any] | None:
    """A training micro-batch on the meta device for the depth and diffusion tasks (shapes from the config)."""
    if kind == "depth_estimator":
        h, w = depth_input_hw(cfg)
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


def _nbytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def fsdp_gathered_bytes(model: nn.Module, unit_classes: tuple[type, ...], world_size: int) -> int:
    """Unsharded parameters FSDP full shard keeps resident at once, beyond each process's shard: the root unit
    (gathered from forward to backward) and two layer units (the running one and the prefetched one)."""
    from ..run.strategies import fsdp_units

    units = fsdp_units(model, unit_classes)
    root = _nbytes(p for _, p in units.get("", []))
    layers = sorted((_nbytes(p for _, p in params) for name, params in units.items() if name), reverse=True)
    full = root + sum(layers[:2])
    return full - full // max(world_size, 1)


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
    device_type: str = "cuda",
    fsdp_unit_classes: tuple[type, ...] = (),
    bucket_bytes: int = 0,
    frozen_models: int = 0,
) -> dict[str, int]:
    """Bytes per process to train `model` (best built on the meta device) on one micro-batch; see the module doc.

    A model not on meta is copied to meta first (its weights are not touched). `sharding`: "none", "zero2"
    (gradients and optimizer states split over `world_size`) or "full" (weights too; with `fsdp_unit_classes`,
    the gathered units are added). `device_type`: whose autocast and kernels the activations are traced for.
    `bucket_bytes`, `frozen_models`: DeepSpeed's gradient buckets and the task's frozen modules (bytes).
    """
    if sharding not in ("none", "zero2", "full"):
        raise ValueError(f"sharding must be none, zero2 or full, got {sharding!r}")
    model = copy.deepcopy(model).to("meta")  # the caller's model keeps its dtypes
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
    acts = saved_activations(model, inputs, autocast_dtype, device_type=device_type)
    checkpointing = bool(gradient_checkpointing and acts["per_layer"])  # nothing to wrap: nothing applied
    if checkpointing:
        activations = acts["outside"] + sum(acts["layer_inputs"]) + max(acts["per_layer"])
    else:
        activations = acts["total"]
    split = max(world_size, 1)
    gathered = 0
    if sharding in ("zero2", "full"):
        gradients, optimizer, master = gradients // split, optimizer // split, master // split
    if sharding == "full":
        weights = weights // split
        out = {k: v // split for k, v in out.items()}
        if fsdp_unit_classes:
            gathered = fsdp_gathered_bytes(model, fsdp_unit_classes, split)
    out.update(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer + master,
        activations=activations,
        activations_no_checkpointing=acts["total"],
        gathered=gathered,
        buckets=int(bucket_bytes),
        frozen_models=int(frozen_models),
        trainable_params=n_trainable,
        batch_size=int(next(iter(v for v in inputs.values() if isinstance(v, Tensor))).shape[0]),
        gradient_checkpointing=int(checkpointing),
        world_size=split,
    )
    out["total"] = weights + gradients + optimizer + master + activations + gathered + out["buckets"] + frozen_models
    return out


def run_dtypes(cfg: Any) -> tuple[str | None, str | None, str | None]:
    """(frozen weights, trainable, autocast) dtypes of a composed config's run, as its strategy really stores them.

    `*-true` precisions cast the module; DeepSpeed with bf16/16-mixed casts it too (its engine's `module.bfloat16()`,
    fp32 master copies in the optimizer); otherwise the task's policy (`weights_dtype`, `trainable_dtype`).
    """
    precision = str(cfg.trainer.get("precision", "32-true"))
    low = "bfloat16" if precision.startswith("bf16") else "float16" if precision.startswith("16") else None
    autocast = low if precision.endswith("-mixed") else None
    weights, trainable = cfg.task.get("weights_dtype"), cfg.task.get("trainable_dtype", "float32")
    if precision in ("bf16-true", "16-true") or ("deepspeed" in strategy_target(cfg) and low is not None):
        weights = trainable = low
    return weights, trainable, autocast


def strategy_target(cfg: Any) -> str:
    strategy = cfg.trainer.get("strategy")
    return str(strategy.get("_target_", "")) if hasattr(strategy, "get") else str(strategy or "")


def _frozen_model_bytes(cfg: Any, dtype: str | None) -> int:
    """The task's frozen modules on the device: the diffusion task's VAE (built on meta from its config)."""
    vae = cfg.model.get("vae") if cfg.model.get("kind") == "diffusion_transformer" else None
    if not vae:
        return 0
    from ..models import build_model

    module = build_model(vae, pretrained=False, meta=True)
    if dtype is not None:
        module = module.to(to_dtype(dtype))
    return _nbytes([*module.parameters(), *module.buffers()])


def estimate_from_config(model: nn.Module, cfg: Any, device_type: str = "cuda") -> dict[str, int] | None:
    """The estimate for a composed config: its micro batch, sequence length / image size, dtypes, checkpointing
    and sharding. None where the model does not fit the task (a dry run of a bare model=: no batch to size)
    or its kind has no input builder here (causal LMs and image classifiers have).
    """
    kind = cfg.model.get("kind")
    if kind not in (cfg.task.get("model_kinds") or []):
        return None
    data = cfg.data.get("module") or {}
    precision = str(cfg.trainer.get("precision", "32-true"))
    weights, trainable, autocast = run_dtypes(cfg)
    target = strategy_target(cfg)
    strategy = cfg.trainer.get("strategy")
    options = strategy if hasattr(strategy, "get") else {}
    fsdp, deepspeed = "fsdp" in target, "deepspeed" in target
    from ..run.batching import world_size

    units: tuple[type, ...] = ()
    if fsdp:
        from ..peft.layer import Adapter
        from ..run.strategies import import_class

        layers = tuple(import_class(str(c)) for c in options.get("layer_classes") or ())
        units = (*layers, Adapter) if options.get("wrap_adapters", True) else layers
    buckets = 0
    if deepspeed and options.get("overlap_comm", False):  # two buckets, in the module's (bf16) dtype
        itemsize = torch.finfo(to_dtype(trainable) or torch.float32).bits // 8
        buckets = 2 * int(options.get("reduce_bucket_size", 500_000_000)) * itemsize
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
        gradient_checkpointing=bool(cfg.model.get("gradient_checkpointing"))
        or (fsdp and bool(options.get("activation_checkpointing", True))),
        world_size=world_size(cfg.trainer),
        sharding="full" if fsdp else "zero2" if deepspeed else "none",
        device_type=device_type,
        fsdp_unit_classes=units,
        bucket_bytes=buckets,
        frozen_models=_frozen_model_bytes(cfg, "bfloat16" if precision == "bf16-true" else None),
        **shape,
    )


def largest_fitting_batch(model: nn.Module, cfg: Any, budget_bytes: int) -> dict[str, float]:
    """How many sequences (causal LM) or images per micro-batch fit `budget_bytes` per process, by the estimate.

    Everything but the activations is independent of the micro-batch, and the activations are proportional to
    it (fixed sequence length / image size), so two estimates (micro-batch 1 and 2) give the line; `max_batch` is
    the largest whole micro-batch under the budget, `max_tokens` it times the sequence length (causal LM).
    """
    from omegaconf import open_dict

    totals = []
    for b in (1, 2):
        sized = cfg.copy()
        with open_dict(sized):
            sized.data.module.batch_size = b
        totals.append(estimate_from_config(model, sized)["total"])
    fixed, per_batch = 2 * totals[0] - totals[1], totals[1] - totals[0]
    max_batch = int((budget_bytes - fixed) // per_batch) if budget_bytes > fixed else 0
    length = int((cfg.data.get("module") or {}).get("max_length") or 1)
    return {"fixed": fixed, "per_batch": per_batch, "max_batch": max_batch, "max_tokens": max_batch * length}


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
    extra = "".join(
        f", {label} {_gib(estimate[key])}"
        for key, label in (
            ("gathered", "FSDP gathered units"),
            ("buckets", "DeepSpeed buckets"),
            ("frozen_models", "frozen VAE"),
        )  # fmt: skip
        if estimate.get(key)
    )
    return [
        f"memory estimate per process (micro-batch {estimate.get('batch_size')}, activation checkpointing {ckpt}, "
        f"world size {estimate.get('world_size', 1)}):",
        f"  weights {_gib(estimate['weights'])} ({by_dtype}), gradients {_gib(estimate['gradients'])}, "
        f"optimizer {_gib(estimate['optimizer'])}, activations {_gib(estimate['activations'])}{extra}, "
        f"total {_gib(estimate['total'])}",
        f"memory_total_bytes={estimate['total']}",
    ]
