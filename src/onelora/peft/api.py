"""Apply, merge, save, load and count: the public API of `onelora.peft`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .layer import AdaptedLinear
from .registry import PeftError, resolve_method

# Task heads left to the task by default (never adapted): transformers' classifier and
# LM head, timm's `head`, sequence-classification `score`.
DEFAULT_HEADS = ["classifier", "lm_head", "head", "score"]
NORM_CLASS = re.compile(r"(LayerNorm|RMSNorm|GroupNorm|BatchNorm\d?d?|InstanceNorm\d?d?)$")

Patterns = str | Iterable[str] | None


def _as_list(p: Patterns) -> list[str] | str | None:
    return p if p is None or isinstance(p, str) else list(p)


def _match(name: str, patterns: list[str] | str) -> bool:
    """peft's rule: a string is a regex on the full name, a list matches `name` or `*.name`."""
    if isinstance(patterns, str):
        return patterns == "all-linear" or re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def _under(name: str, patterns: list[str] | str | None) -> bool:
    """True if the module or any module above it matches (a head's inner layers are the head)."""
    if not patterns:
        return False
    parts = name.split(".")
    return any(_match(".".join(parts[:i]), patterns) for i in range(1, len(parts) + 1))


def _is_norm(module: nn.Module) -> bool:
    return NORM_CLASS.search(type(module).__name__) is not None


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def find_targets(model: nn.Module, target_modules: Patterns, exclude: Patterns) -> list[str]:
    targets, exclude = _as_list(target_modules) or "all-linear", _as_list(exclude)
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and not isinstance(m, AdaptedLinear)
        and _match(n, targets)
        and not _under(n, exclude)
    ]
    if not names:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise PeftError(
            f"target_modules={targets!r} matched no nn.Linear of {type(model).__name__} outside the excluded "
            f"{exclude!r}; its linear layers are named: {', '.join(linear) or 'none'}"
        )
    return names


def apply_peft(
    model: nn.Module,
    method: str,
    *,
    target_modules: Patterns = None,
    exclude_modules: Patterns = None,
    head: Patterns = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> nn.Module:
    """Put `method` (any name of the `peft` config group) on `model`, in place; returns it.

    target_modules: "all-linear" (default), a regex on full module names, or a list of
        names / name suffixes (`["q_proj", "v_proj"]`), as in HF peft.
    exclude_modules: never adapted; default `DEFAULT_HEADS` (the task head is left to the task).
    head: the task head's module names: excluded from adaptation and trained by every method.
    seed: seeds the random parts (LoRA's A, VeRA's projections, 1LoRA-random's v).
    dtype: storage dtype of the trainable parameters the method creates (fp32 by default).
    options: the method's own (rank, alpha, dropout, rank_rule, d_initial, ...).
    """
    m = resolve_method(method)
    if getattr(model, "peft_config", None):
        raise PeftError(f"model already has peft method {model.peft_config['method']!r}; apply_peft once per model")
    allowed = m.option_names() - {"dtype"}
    unknown = set(options) - allowed
    if unknown:
        raise PeftError(
            f"peft method {m.name!r} takes no option {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(sorted(allowed)) or 'none'}"
        )
    defaults = dict(m.defaults)
    default_targets = defaults.pop("target_modules", None)  # e.g. lora_qkv's
    target_modules = default_targets if target_modules is None else target_modules
    opts = {**defaults, **options}
    exclude = list(DEFAULT_HEADS if exclude_modules is None else _as_list(exclude_modules) or [])
    heads = _as_list(head) or []
    heads = [heads] if isinstance(heads, str) else heads

    for p in model.parameters():
        p.requires_grad_(m.full)
    adapted = 0
    if not m.full and (m.adapter is not None or {"bias", "gamma"} & set(m.extras)):
        names = find_targets(model, target_modules, exclude + heads)
        layers = [model.get_submodule(n) for n in names]
        for i, layer in enumerate(layers):
            layer._peft_index = i
        adapter_kwargs = dict(opts)
        if m.adapter is not None and "seed" in m.option_names():
            adapter_kwargs["seed"] = seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            shared = m.adapter.shared(layers, **adapter_kwargs) if hasattr(m.adapter, "shared") else None
            for name, layer in zip(names, layers):
                kwargs = dict(adapter_kwargs, shared=shared) if shared is not None else adapter_kwargs
                adapter = m.adapter(layer, dtype=dtype, **kwargs) if m.adapter is not None else None
                new = AdaptedLinear(layer, adapter, "bias" in m.extras, "gamma" in m.extras, dtype)
                _set_module(model, name, new)
                del layer._peft_index
        adapted = len(names)
    if "norms" in m.extras:
        for name, mod in model.named_modules():
            if _is_norm(mod) and not _under(name, heads):
                for p in mod.parameters(recurse=False):
                    p.requires_grad_(True)
    for name, mod in model.named_modules():
        if heads and _match(name, heads):
            mod.requires_grad_(True)
    model.peft_config = {
        "method": m.name,
        "options": opts,
        "target_modules": _as_list(target_modules),
        "exclude_modules": exclude,
        "head": heads,
        "seed": seed,
        "dtype": str(dtype).removeprefix("torch."),
        "adapted_layers": adapted,
    }
    return model


def merge_peft(model: nn.Module) -> nn.Module:
    """Fold every adapter into plain `nn.Linear` layers (same outputs, no overhead); returns the model."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, AdaptedLinear):
            _set_module(model, name, mod.merged())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


@dataclass
class ParameterCount:
    trainable: int
    total: int
    adapted_layers: int
    groups: dict[str, int] = field(default_factory=dict)

    @property
    def head(self) -> int:
        return self.groups.get("head", 0)

    @property
    def peft(self) -> int:
        """What the method trains, the task head excluded: the number the paper reports."""
        return self.trainable - self.head

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "peft": self.peft, "head": self.head}


def _owner_groups(model: nn.Module, heads: list[str]) -> dict[str, str]:
    """Map each parameter name to its group: adapter, bias, gamma, norms, head or weights."""
    groups: dict[str, str] = {}
    for mname, mod in model.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if heads and _under(mname, heads):
                g = "head"
            elif isinstance(mod, AdaptedLinear) and pname in ("bias", "gamma"):
                g = pname
            elif "adapter" in mname.split("."):
                g = "adapter"
            elif _is_norm(mod):
                g = "norms"
            elif pname == "bias":
                g = "bias"
            else:
                g = "weights"
            groups.setdefault(full, g)
    return groups


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameters (each tensor once), adapted layers, and trainables by group."""
    cfg = getattr(model, "peft_config", None) or {}
    owner = _owner_groups(model, cfg.get("head", []))
    trainable = total = 0
    groups: dict[str, int] = {}
    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            g = owner.get(name, "weights")
            groups[g] = groups.get(g, 0) + p.numel()
    adapted = sum(isinstance(m, AdaptedLinear) for m in model.modules())
    return ParameterCount(trainable, total, adapted, groups)


# saving and loading live in .serialization; re-exported here so `from onelora.peft.api import save_peft` keeps working
from .serialization import load_peft, peft_state_dict, save_peft  # noqa: E402

__all__ = [
    "DEFAULT_HEADS",
    "ParameterCount",
    "apply_peft",
    "count_parameters",
    "find_targets",
    "load_peft",
    "merge_peft",
    "peft_state_dict",
    "save_peft",
]
