"""HF peft's tuners as peers in the suite: every `hf_<name>` method is built by `peft.get_peft_model`.

A config of the `peft` group names peft's config class and its arguments, and the suite does the rest
(targets from the model config's roles, the task head, counts, dry run, records, reports):

    # configs/peft/hf_miss_r1.yaml
    name: hf_miss_r1
    targets: all
    options: {config_class: MissConfig, config: {r: 1}}

In Python: `apply_peft(model, "hf_miss_r1", config_class="MissConfig", config={"r": 1})`. The layers
`apply_peft` selects become peft's `target_modules` (their full names), the seed seeds peft's random
initialisations, and peft keeps its adapters in fp32 on a bf16 model (`autocast_adapter_dtype`) as we do.
peft's own layers stay in the model (no `PeftModel` wrapper around it), so tasks see the same model.

What the family does itself, since peft builds its layers (inject, merge, switch off, count, refuse a model that
peft modified outside the suite, save in peft's format), is its `HOOKS`, registered with the prefix `hf_`: the
library's API calls them and knows nothing of peft.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .layer import Adapter
from .registry import FamilyHooks, PeftError, register_family

# options a peft config takes that the suite sets itself
SET_BY_SUITE = {
    "target_modules": "the model config's target roles (peft.targets)",
    "modules_to_save": "the task head (model.head)",
    "exclude_modules": "apply_peft's exclude_modules",
}


def peft_config(config_class: str, config: dict[str, Any] | None, target_modules: list[str]) -> Any:
    """peft's config object, or one PeftError line naming what is wrong."""
    from .hf_format import _peft

    peft = _peft()
    cls = getattr(peft, str(config_class), None)
    if not (isinstance(cls, type) and issubclass(cls, peft.PeftConfig)) or issubclass(cls, peft.PromptLearningConfig):
        tuners = sorted(
            n
            for n in dir(peft)
            if n.endswith("Config")
            and isinstance(getattr(peft, n), type)
            and issubclass(getattr(peft, n), peft.PeftConfig)
            and not issubclass(getattr(peft, n), peft.PromptLearningConfig)
            and n != "PeftConfig"
        )
        raise PeftError(
            f"config_class={config_class!r} is not a tuner config of peft {peft.__version__}; "
            f"valid: {', '.join(tuners)}"
        )
    kwargs = dict(config or {})
    for key in SET_BY_SUITE.keys() & kwargs.keys():
        raise PeftError(f"{config_class}: {key} is set by the suite from {SET_BY_SUITE[key]}; remove it from config")
    try:
        return cls(target_modules=list(target_modules), **kwargs)
    except (TypeError, ValueError) as e:
        raise PeftError(f"{config_class}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) is invalid: {e}") from e


class HFTuner(Adapter):
    """The `hf_*` family's options: peft injects its own layers (`inject`), so there is no per-layer adapter."""

    def __init__(
        self,
        layer: nn.Module,
        config_class: str,
        config: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        raise PeftError("hf_* methods are built by peft.get_peft_model (apply_peft does it), not layer by layer")

    @staticmethod
    def check_options(opts: dict[str, Any]) -> str | None:
        """Validated before any model is built: the class exists and takes these arguments."""
        if "config_class" not in opts:
            return "option config_class is required: the name of a peft config class, e.g. MissConfig"
        if opts.get("config") is not None and not isinstance(opts["config"], dict):
            return f"option config must be a mapping of {opts['config_class']}'s arguments, got {opts['config']!r}"
        peft_config(opts["config_class"], opts.get("config"), ["x"])
        return None


def inject(
    model: nn.Module,
    names: list[str],
    *,
    seed: int,
    dtype: torch.dtype,
    config_class: str,
    config: dict[str, Any] | None = None,
) -> int:
    """Let peft adapt the layers `names` of `model` in place; returns how many it adapted."""
    cfg = peft_config(config_class, config, names)  # imports peft first, quietly
    import peft
    from peft.tuners.tuners_utils import BaseTunerLayer

    meta = any(p.is_meta for p in model.parameters())
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        try:
            # peft asks transformers' deprecated `is_gradient_checkpointing`: not the user's concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            # on GPT-2's Conv1D peft sets fan_in_fan_out itself, as it should, and says so every time
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False", category=UserWarning)
            # low_cpu_mem_usage creates the adapters on the meta device with the model (the dry run)
            wrapper = peft.get_peft_model(
                model, cfg, autocast_adapter_dtype=dtype == torch.float32, low_cpu_mem_usage=meta
            )
        except (TypeError, ValueError) as e:
            raise PeftError(f"peft could not build {config_class} on {type(model).__name__}: {e}") from e
    # the wrapper is not a submodule (that would be a cycle); keep it for peft's own state dict and config
    object.__setattr__(model, "hf_peft_model", wrapper)
    return sum(isinstance(m, BaseTunerLayer) for m in model.modules())


def hf_adapter(model: nn.Module) -> tuple[Any, dict[str, torch.Tensor]]:
    """peft's config and state dict of an `hf_*` model, as `PeftModel.save_pretrained` would write them."""
    from peft import get_peft_model_state_dict

    wrapper = model.__dict__.get("hf_peft_model")
    if wrapper is None:
        raise PeftError("this hf_* model was not built by apply_peft in this process; load it with load_peft first")
    return wrapper.peft_config["default"], get_peft_model_state_dict(wrapper)


def merge(model: nn.Module) -> None:
    """peft folds its own layers back into the base layers, in place."""
    wrapper = model.__dict__.pop("hf_peft_model", None)
    if wrapper is not None:
        wrapper.merge_and_unload()


@contextmanager
def disable(model: nn.Module) -> Iterator[None]:
    """peft's own switch on its layers; the state before entry (and the trainable flags, which peft's switch
    resets) restored at exit."""
    layers = [m for m in model.modules() if is_layer(m)]
    was_off = [bool(layer.disable_adapters) for layer in layers]
    grads = [(p, p.requires_grad) for layer in layers for p in layer.parameters()]
    try:
        for layer in layers:
            layer.enable_adapters(False)
        yield
    finally:
        for layer, off in zip(layers, was_off, strict=True):
            if not off:
                layer.enable_adapters(True)
        for p, flag in grads:
            p.requires_grad_(flag)


def is_layer(module: nn.Module) -> bool:
    """A layer peft's tuner adapted (it names the parts it adds: `adapter_layer_names`)."""
    return bool(getattr(module, "adapter_layer_names", ()))


def in_adapter(model: nn.Module, mname: str) -> bool:
    """True for the parts an HF peft tuner layer adds (its `adapter_layer_names`: lora_A, miss_block, ...)."""
    parts = mname.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in getattr(model.get_submodule(".".join(parts[:i])), "adapter_layer_names", ()):
            return True
    return False


def refuse_peft_layers(model: nn.Module, what: str) -> None:
    """Refuse a model into which HF peft put its layers in place (`PeftModel.from_pretrained(base, ...)` and
    `get_peft_model(base, ...)` modify `base`): its adapted layers are peft's wrappers, neither ours nor plain
    layers, and its `peft_config` is peft's. The suite's own `hf_*` methods (their `peft_config` is ours) pass."""
    if "method" in (getattr(model, "peft_config", None) or {}) or "peft" not in sys.modules:
        return  # ours, or no HF peft layer can be in it
    from peft.tuners.tuners_utils import BaseTunerLayer

    name = next((n for n, mod in model.named_modules() if isinstance(mod, BaseTunerLayer)), None)
    if name is not None:
        layer = model.get_submodule(name)
        raise PeftError(
            f"{what}: the model already holds HF peft layers ({name}: "
            f"{type(layer).__module__}.{type(layer).__qualname__}), put there in place by PeftModel.from_pretrained "
            "or get_peft_model; give it a fresh model without them (or keep using the PeftModel)"
        )


HOOKS = FamilyHooks(
    inject=inject,
    merge=merge,
    disable=disable,
    is_layer=is_layer,
    in_adapter=in_adapter,
    refuse=refuse_peft_layers,
    save=hf_adapter,
)
register_family("hf_", HFTuner, HOOKS, doc="an HF peft tuner via peft.get_peft_model; options config_class, config")
