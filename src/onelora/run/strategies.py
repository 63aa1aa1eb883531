"""Lightning strategies for the LLaMA runs, built from Hydra configs (which cannot name Python classes).

`fsdp_strategy`: FSDP full shard, one FSDP unit per decoder layer (and per adapter), activation
checkpointing per decoder layer. Storage dtypes are kept as the task set them (frozen weights bf16,
trainable tensors fp32) and autocast (`precision: bf16-mixed`) does the bf16 compute:

- FSDP (v1, what Lightning's `FSDPStrategy` wraps) flattens each unit's parameters into one tensor,
  which must have one dtype. Each `Adapter` module (LoRA's A/B, 1LoRA's b, ...) is therefore its own
  unit (`wrap_adapters`): fp32 there, bf16 in the decoder layer's unit. This also keeps trainable and
  frozen tensors in separate units, so no gradient memory is allocated for the frozen weights (with a
  mixed unit FSDP allocates gradients for the whole flat parameter).
- `mixed_precision=MixedPrecision()` (no casts): Lightning's default for bf16-mixed would cast
  every parameter *and buffer* to bf16 in FSDP units; LLaMA's RoPE `inv_freq` buffer must stay fp32.
- `use_orig_params=True` (Lightning's default): the optimizer sees the original parameters, and a unit
  may mix trainable and frozen tensors (methods that unfreeze norms).
- Methods whose trainable tensors sit directly on the adapted linear layer beside its bf16 weight
  (BitFit's β, DiffFit's γ) cannot be flattened with it: `OneLoRAFSDPStrategy` says so before FSDP
  does (use `trainer=deepspeed`, or `task.weights_dtype=float32`).
- `trainer.gradient_clip_val` clips the gradient norm through the root FSDP module's `clip_grad_norm_` (the norm
  over every rank's shards); Lightning's own FSDP precision plugin refuses norm clipping.

`deepspeed_strategy`: ZeRO stage 2 as MoRA's `ds.config` (overlap_comm, 2e8 buckets); checkpoints keep
only trainable tensors (`exclude_frozen_parameters`); Lightning writes `trainer.gradient_clip_val` into
DeepSpeed's `gradient_clipping`. DeepSpeed casts the module to bf16 and keeps fp32
master copies of what trains in its optimizer. It is not a dependency of the suite: a clear error if missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from ..errors import ConfigError


def import_class(path: str) -> type:
    """A class from its dotted path (`transformers.models.llama.modeling_llama.LlamaDecoderLayer`)."""
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"cannot import {path!r} named in the trainer's strategy config: {e}") from None
    if not isinstance(cls, type):
        raise ConfigError(f"{path!r} is not a class")
    return cls


def fsdp_units(model: nn.Module, unit_classes: Sequence[type]) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The FSDP units a `ModuleWrapPolicy(unit_classes)` makes: module name -> the parameters it flattens."""
    classes = tuple(unit_classes)
    units: dict[str, list[tuple[str, nn.Parameter]]] = {}

    def walk(mod: nn.Module, prefix: str, owner: str) -> None:
        if prefix and isinstance(mod, classes):
            owner = prefix
        units.setdefault(owner, [])
        for n, p in mod.named_parameters(recurse=False):
            units[owner].append((f"{prefix}.{n}" if prefix else n, p))
        for n, child in mod.named_children():
            walk(child, f"{prefix}.{n}" if prefix else n, owner)

    walk(model, "", "")
    return units


def check_uniform_dtypes(model: nn.Module, unit_classes: Sequence[type]) -> None:
    """FSDP v1 flattens each unit into one tensor of one dtype: a clear error where a unit mixes dtypes."""
    seen: set[int] = set()
    for unit, params in fsdp_units(model, unit_classes).items():
        dtypes: dict[Any, str] = {}
        for name, p in params:
            if id(p) not in seen:
                seen.add(id(p))
                dtypes.setdefault(p.dtype, name)
        if len(dtypes) > 1:
            found = ", ".join(f"{str(d).removeprefix('torch.')} ({n})" for d, n in dtypes.items())
            raise ConfigError(
                f"FSDP flattens each wrapped unit into one tensor of one dtype, but unit {unit or '<root>'!r} holds "
                f"{found}: the method trains tensors stored beside the frozen weights (e.g. BitFit's β, DiffFit's γ); "
                "use trainer=deepspeed, or task.weights_dtype=float32"
            )


def _strategy_class() -> type:
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.strategies import FSDPStrategy

    class RootClipFSDPPrecision(FSDPPrecision):
        """FSDPPrecision that clips the gradient norm through the root FSDP module (`clip_grad_norm_`, the norm
        over every rank's shards), where Lightning's refuses `gradient_clip_val` for lack of that module."""

        def __init__(self, precision: Any, scaler: Any, strategy: Any) -> None:
            super().__init__(precision, scaler)
            self.strategy = strategy

        def clip_grad_by_norm(self, optimizer: Any, clip_val: float) -> None:
            from torch.distributed.fsdp import FullyShardedDataParallel

            (root,) = FullyShardedDataParallel.fsdp_modules(self.strategy.model, root_only=True)
            root.clip_grad_norm_(clip_val)

    class OneLoRAFSDPStrategy(FSDPStrategy):
        """Lightning's FSDPStrategy with a dtype check of the units before wrapping, and norm clipping."""

        def __init__(self, *args: Any, unit_classes: Iterable[type] = (), **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.unit_classes = tuple(unit_classes)

        @property
        def precision_plugin(self) -> Any:
            return FSDPStrategy.precision_plugin.fget(self)

        @precision_plugin.setter
        def precision_plugin(self, plugin: Any) -> None:
            if type(plugin) is FSDPPrecision:  # what Lightning builds from trainer.precision
                plugin = RootClipFSDPPrecision(plugin.precision, plugin.scaler, self)
            FSDPStrategy.precision_plugin.fset(self, plugin)

        def _setup_model(self, model: nn.Module) -> nn.Module:
            check_uniform_dtypes(model, self.unit_classes)
            return super()._setup_model(model)

    return OneLoRAFSDPStrategy


def _wrap_units(strategy: str, layer_classes: Sequence[str], wrap_adapters: bool) -> tuple[list[type], list[type]]:
    """The layer classes to wrap, and the sharding units: those layers, plus each adapter when asked."""
    layers = [import_class(p) for p in layer_classes]
    if not layers:
        raise ConfigError(f"{strategy} needs at least one layer class to wrap (layer_classes=)")
    units = list(layers)
    if wrap_adapters:
        from ..peft.layer import Adapter

        units.append(Adapter)
    return layers, units


def fsdp_strategy(
    layer_classes: Sequence[str] = ("transformers.models.llama.modeling_llama.LlamaDecoderLayer",),
    wrap_adapters: bool = True,
    activation_checkpointing: bool = True,
    keep_dtypes: bool = True,
    sharding_strategy: str = "FULL_SHARD",
    state_dict_type: str = "full",
    **kwargs: Any,
) -> Any:
    """An FSDP strategy: units per `layer_classes` (+ adapters), activation checkpointing per layer.

    keep_dtypes: FSDP casts nothing (`MixedPrecision()`), autocast computes in bf16; False: Lightning's
    mixed-precision config for the trainer's precision. kwargs go to Lightning's FSDPStrategy / torch FSDP
    (e.g. `limit_all_gathers`, `cpu_offload`).
    """
    layers, units = _wrap_units("fsdp_strategy", layer_classes, wrap_adapters)
    if keep_dtypes:
        from torch.distributed.fsdp import MixedPrecision

        kwargs.setdefault("mixed_precision", MixedPrecision())
    return _strategy_class()(
        auto_wrap_policy=set(units),
        activation_checkpointing_policy=set(layers) if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        unit_classes=units,
        **kwargs,
    )


def deepspeed_strategy(stage: int = 2, exclude_frozen_parameters: bool = True, **kwargs: Any) -> Any:
    """Lightning's DeepSpeedStrategy (ZeRO `stage`); a one-line error where deepspeed is not installed."""
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "trainer=deepspeed needs the deepspeed package, which is not installed: `pip install deepspeed` on the "
            "GPU nodes (it builds CUDA ops), or use trainer=fsdp"
        )
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(stage=stage, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)


def trains_own_weights(model: nn.Module) -> bool:
    """Whether the method trains the model's own weights (full fine-tuning), not only adapters, extras and head."""
    from ..peft import count_parameters

    return "weights" in count_parameters(model).groups


def _ddp_class() -> type:
    from lightning.pytorch.strategies import DDPStrategy

    class OneLoRADDPStrategy(DDPStrategy):
        """Lightning's DDPStrategy that finds unused parameters only where a method can have some."""

        def _setup_model(self, model: nn.Module) -> Any:
            if "find_unused_parameters" not in self._ddp_kwargs:
                inner = getattr(model, "model", model)  # the LightningModule's network
                self._ddp_kwargs["find_unused_parameters"] = trains_own_weights(inner)
            return super()._setup_model(model)

    return OneLoRADDPStrategy


def ddp_strategy(**kwargs: Any) -> Any:
    """DDP that trains every method as on one device.

    Full fine-tuning trains every tensor of the model, and some never take part in a forward (Dinov2's
    `mask_token`, used only for masked-image pre-training; the DPT neck's first `residual_layer1`): plain DDP
    then stops at step 2 ("parameters that were not used in producing the loss"). For a method that trains the
    model's own weights, DDP finds the unused parameters each step (a graph traversal; they keep no gradient,
    so AdamW leaves them untouched, as on one device). The PEFT methods train adapters, extras and heads, which
    every forward uses: no traversal. `find_unused_parameters=` given explicitly wins. kwargs go to Lightning's
    DDPStrategy / torch DDP.
    """
    return _ddp_class()(**kwargs)


def _fsdp2_class() -> type:
    from lightning.pytorch.strategies import ModelParallelStrategy

    class OneLoRAFSDP2Strategy(ModelParallelStrategy):
        """Lightning's ModelParallelStrategy as pure data parallelism: FSDP2 over every process, no tensor
        parallelism; the task's `configure_model` hands its network to `shard`."""

        def __init__(self, unit_classes: Sequence[type], activation_classes: Sequence[type], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._unit_classes, self._activation_classes = tuple(unit_classes), tuple(activation_classes)

        def setup_environment(self) -> None:
            # Lightning's "auto" splits one node's processes into tensor parallelism; here all shard the data
            if self._data_parallel_size == "auto":
                self._data_parallel_size = self.num_nodes * self.num_processes
            if self._tensor_parallel_size == "auto":
                self._tensor_parallel_size = 1
            super().setup_environment()

        def shard(self, network: nn.Module) -> None:
            """Shard `network` over the data-parallel processes (`shard_units`)."""
            shard_units(network, self.device_mesh["data_parallel"], self._unit_classes, self._activation_classes)

    return OneLoRAFSDP2Strategy


def shard_units(network: nn.Module, mesh: Any, unit_classes: Sequence[type], activation: Sequence[type]) -> None:
    """fully_shard each `unit_classes` module (innermost first), then the root, over `mesh`; activation
    checkpointing on each `activation` module. Once: fit, then validate, call it again."""
    from torch.distributed._composable import checkpoint
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(network, FSDPModule):
        return
    units, activation = tuple(unit_classes), tuple(activation)
    for _, module in reversed(list(network.named_modules())):
        if activation and isinstance(module, activation):
            checkpoint(module)  # composable: the state-dict keys stay the module's own
        if module is not network and isinstance(module, units):
            fully_shard(module, mesh=mesh)
    fully_shard(network, mesh=mesh)


def fsdp2_strategy(
    layer_classes: Sequence[str] = ("transformers.models.llama.modeling_llama.LlamaDecoderLayer",),
    wrap_adapters: bool = False,
    activation_checkpointing: bool = True,
    **kwargs: Any,
) -> Any:
    """FSDP2 (`torch.distributed.fsdp.fully_shard`) full shard: one unit per `layer_classes` module (its adapters
    inside), activation checkpointing per layer. Each parameter is sharded on its own (DTensor, no flat
    parameter), so units keep their tensors' dtypes, and it runs on CPU with gloo (FSDP v1 refuses a CPU-only
    machine). Checkpoints are one full file (`save_distributed_checkpoint=False`), as every other strategy
    writes. kwargs go to Lightning's ModelParallelStrategy.

    wrap_adapters=False, unlike FSDP v1: FSDP2 gathers a unit of mixed dtypes (bf16 weights, fp32 adapters) in
    one collective, so an adapter needs no unit of its own, and one would change the gradients. A unit hooks its
    forward inputs (to reduce its gradients once they are complete), so the gradient of a layer input that
    several adapters share (q/k/v, gate/up) is summed per adapter first, then across adapters: over bf16 frozen
    weights a different rounding than one process's, about 1e-3 relative from the first step where LoRA's B is
    non-zero on. Without adapter units the sums are one process's (`tests/test_fsdp.py`), with one all-gather
    per layer instead of one per adapter as well.
    """
    layers, units = _wrap_units("fsdp2_strategy", layer_classes, wrap_adapters)
    kwargs.setdefault("save_distributed_checkpoint", False)
    return _fsdp2_class()(unit_classes=units, activation_classes=layers if activation_checkpointing else (), **kwargs)
