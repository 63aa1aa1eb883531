"""Apply, merge, save, load and count: the public API of `onelora.peft`."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .bases import AdaptedQuantized, describe, layer_kind, wrapper_class
from .layer import AdaptedLayer
from .registry import Method, PeftError, family_hooks, resolve_method
from .targets import Patterns, as_list, is_norm, matches, under

# Task heads left to the task by default (never adapted): transformers' classifier and
# LM head, timm's `head`, sequence-classification `score`.
DEFAULT_HEADS = ["classifier", "lm_head", "head", "score"]

LINEAR_KINDS = ("linear", "conv1d", "quantized")  # what "all-linear" and a regex select; nn.Conv2d only by name
SUPPORTED = (
    "nn.Linear, transformers Conv1D, quantized nn.Linear subclasses (bitsandbytes, torchao) and, named in a "
    "target_modules list, nn.Conv2d (onelora, lora, bitfit)"
)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


# ---------------------------------------------------------------------------------- validation
def _checked_patterns(what: str, p: Patterns) -> list[str] | str | None:
    """A string must be a valid regex (or "all-linear"), a list must hold names."""
    if p is not None and not isinstance(p, (str, list, tuple, set)):
        raise PeftError(f"{what}={p!r} is not allowed; give a regex string or a list of module names")
    p = as_list(p)
    if isinstance(p, str) and p != "all-linear":
        try:
            re.compile(p)
        except re.error as e:
            raise PeftError(
                f"{what}={p!r} is not a valid regular expression ({e}); give a regex on full module names, "
                "a list of module names, or 'all-linear'"
            ) from None
    elif p is not None and not all(isinstance(x, str) for x in p):
        bad = next(x for x in p if not isinstance(x, str))
        raise PeftError(f"{what} must be a regex string or a list of module names; {bad!r} is not a name")
    return p


@dataclass(frozen=True)
class PeftPlan:
    """A method and its options after validation: what `apply_peft` builds."""

    method: Method
    options: dict[str, Any]
    target_modules: list[str] | str | None
    exclude_modules: list[str]
    head: list[str]
    exclude_given: bool  # exclude_modules came from the caller (its names must exist), not the defaults


def validate_peft(
    method: str,
    *,
    target_modules: Patterns = None,
    exclude_modules: Patterns = None,
    head: Patterns = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> PeftPlan:
    """Check a method, its options (against the method's schema) and the module patterns, without a model.

    Takes `apply_peft`'s arguments; raises one `PeftError` line naming the value and what is allowed.
    `run()` calls it before any weight is loaded, so a bad option costs no model load.
    """
    m = resolve_method(method)
    opts = m.validate_options(options)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PeftError(f"seed={seed!r} is not allowed; seed must be an integer")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise PeftError(f"dtype={dtype!r} is not allowed; dtype must be a floating torch.dtype such as torch.float32")
    default_targets = m.defaults.get("target_modules")  # e.g. lora_qkv's
    targets = _checked_patterns("target_modules", default_targets if target_modules is None else target_modules)
    exclude = _checked_patterns("exclude_modules", DEFAULT_HEADS if exclude_modules is None else exclude_modules)
    heads = _checked_patterns("head", [head] if isinstance(head, str) else head) or []
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
    return PeftPlan(m, opts, targets, exclude, list(heads), exclude_modules is not None)


def _check_names_exist(model: nn.Module, what: str, names: list[str]) -> None:
    """Every name given in a list must match a module (full name or its last parts): a typo is an error."""
    modules = [n for n, _ in model.named_modules() if n]
    for p in names:
        if not any(matches(n, [p]) for n in modules):
            close = difflib.get_close_matches(p, sorted({n.rsplit(".", 1)[-1] for n in modules} | set(modules)), 3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; names match a module's name or its last parts"
            if what == "target_modules":
                layers = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if layer_kind(m)})
                hint = f"; its adaptable layers are named: {', '.join(layers) or 'none'}"
            raise PeftError(f"{what} {p!r} matches no module of {type(model).__name__}{hint}")


# --------------------------------------------------------------------------------- applying
def find_targets(model: nn.Module, target_modules: Patterns, exclude: Patterns) -> list[str]:
    """The modules to adapt: every linear-like layer ("all-linear"), those a regex matches, or those named in a
    list (nn.Conv2d only so). A listed module of a type no method can adapt is refused, never skipped."""
    targets, exclude = as_list(target_modules) or "all-linear", as_list(exclude)
    names, unsupported = [], []
    for n, mod in model.named_modules():
        if not n or under(n, exclude) or not matches(n, targets):
            continue
        kind = layer_kind(mod)
        if kind in LINEAR_KINDS or (kind == "conv2d" and isinstance(targets, list)):
            names.append(n)
        elif not isinstance(mod, AdaptedLayer) and (isinstance(targets, list) or not any(mod.children())):
            unsupported.append(f"{n} ({type(mod).__name__})")  # a regex may pass over leaves it cannot adapt
    if unsupported and (isinstance(targets, list) or (not names and targets != "all-linear")):
        raise PeftError(
            f"target_modules={targets!r} {'names' if isinstance(targets, list) else 'matches only'} layers no "
            f"method can adapt: {', '.join(unsupported[:5])}; "
            f"supported: {SUPPORTED}"
        )
    if not names:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if layer_kind(m) in LINEAR_KINDS})
        convs = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if layer_kind(m) == "conv2d"})
        hint = f"; its nn.Conv2d layers ({', '.join(convs)}) are adapted when named in a list" if convs else ""
        raise PeftError(
            f"target_modules={targets!r} matched no linear layer of {type(model).__name__} outside the excluded "
            f"{exclude!r}; its linear layers are named: {', '.join(linear) or 'none'}{hint}"
        )
    return names


def _check_support(m: Method, names: list[str], kinds: list[str], layers: list[nn.Module]) -> None:
    """Refuse up front a layer the method cannot adapt (never wrap it and crash later)."""
    for name, kind, layer in zip(names, kinds, layers):
        what = f"peft method {m.name!r} cannot adapt {name} ({type(layer).__name__})"
        if kind == "quantized" and m.adapter is not None and m.adapter.uses_weight:
            raise PeftError(
                f"{what}: it needs the layer's float weight; on quantized layers use onelora, lora, vera, mora1, "
                "bitfit (or dequantize the model first)"
            )
        if kind == "conv2d" and ((m.adapter is not None and not m.adapter.conv2d) or "gamma" in m.extras):
            raise PeftError(f"{what}: on nn.Conv2d only onelora, lora and bitfit are implemented")
        if kind == "conv2d" and m.adapter is not None and m.adapter.__name__ == "LoRA" and layer.groups != 1:
            raise PeftError(f"{what}: LoRA on a grouped convolution (groups={layer.groups}) is not implemented")


def refuse_foreign_layers(model: nn.Module, what: str) -> None:
    """One PeftError line if a family's layers were put into the model outside the suite (each family says)."""
    for hooks in family_hooks():
        hooks.refuse(model, what)


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

    target_modules: "all-linear" (default: nn.Linear, transformers Conv1D, quantized linears), a regex on
        full module names, or a list of names / name suffixes (`["q_proj", "v_proj"]`), as in HF peft;
        nn.Conv2d layers are adapted when named in a list. Every listed name must match a module.
    exclude_modules: never adapted; default `DEFAULT_HEADS` (the task head is left to the task).
    head: the task head's module names: excluded from adaptation and trained by every method.
    seed: seeds the random parts (LoRA's A, VeRA's projections, 1LoRA-random's v).
    dtype: storage dtype of the trainable parameters the method creates (fp32 by default).
    options: the method's own (rank, alpha, dropout, rank_rule, d_initial, ...), checked by `validate_peft`.
    """
    plan = validate_peft(
        method,
        target_modules=target_modules,
        exclude_modules=exclude_modules,
        head=head,
        seed=seed,
        dtype=dtype,
        **options,
    )
    m, opts, heads = plan.method, plan.options, plan.head
    refuse_foreign_layers(model, "apply_peft")
    if getattr(model, "peft_config", None):
        raise PeftError(f"model already has peft method {model.peft_config['method']!r}; apply_peft once per model")
    _check_names_exist(model, "head", heads)
    if plan.exclude_given:
        _check_names_exist(model, "exclude_modules", [n for n in plan.exclude_modules if n not in DEFAULT_HEADS])
    if isinstance(plan.target_modules, list):
        _check_names_exist(model, "target_modules", plan.target_modules)
    if m.full and any(not p.dtype.is_floating_point for p in model.parameters()):
        raise PeftError(f"peft method {m.name!r} cannot train a quantized model's integer weights; use an adapter")

    for p in model.parameters():
        p.requires_grad_(m.full)
    adapted = 0
    if m.hooks is not None:  # a family that builds its own layers (HF peft's tuners)
        names = find_targets(model, plan.target_modules, plan.exclude_modules + heads)
        adapted = m.hooks.inject(model, names, seed=seed, dtype=dtype, **opts)
    elif not m.full and (m.adapter is not None or {"bias", "gamma"} & set(m.extras)):
        names = find_targets(model, plan.target_modules, plan.exclude_modules + heads)
        layers = [model.get_submodule(n) for n in names]
        kinds = [layer_kind(layer) for layer in layers]
        _check_support(m, names, kinds, layers)
        specs = [describe(layer, i) for i, layer in enumerate(layers)]
        adapter_kwargs = dict(opts)
        if m.adapter is not None and "seed" in m.option_names():
            adapter_kwargs["seed"] = seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            shared = m.adapter.shared(specs, **adapter_kwargs) if hasattr(m.adapter, "shared") else None
            for name, layer, kind, spec in zip(names, layers, kinds, specs):
                kwargs = dict(adapter_kwargs, shared=shared) if shared is not None else adapter_kwargs
                adapter = m.adapter(spec, dtype=dtype, **kwargs) if m.adapter is not None else None
                new = wrapper_class(kind)(layer, adapter, "bias" in m.extras, "gamma" in m.extras, dtype)
                _set_module(model, name, new)
        adapted = len(names)
    if "norms" in m.extras:
        frozen = {}
        for name, mod in model.named_modules():
            if is_norm(mod) and not under(name, heads):
                for pname, p in mod.named_parameters(recurse=False):
                    p.requires_grad_(True)
                    frozen[f"{name}.{pname}" if name else pname] = p.detach().clone()
        model._peft_frozen_norms = frozen  # for disable_peft: norms train in place
    for name, mod in model.named_modules():
        if heads and matches(name, heads):
            mod.requires_grad_(True)
    model.peft_config = {
        "method": m.name,
        "options": opts,
        "target_modules": plan.target_modules,
        "exclude_modules": plan.exclude_modules,
        "head": heads,
        "seed": seed,
        "dtype": str(dtype).removeprefix("torch."),
        "adapted_layers": adapted,
    }
    return model


def merge_peft(model: nn.Module, dequantize: bool = False) -> nn.Module:
    """Fold every adapter into plain layers (same outputs, no overhead); returns the model.

    A quantized base layer has no float weight to fold into: refused, unless `dequantize=True`, which
    replaces it by a plain nn.Linear holding the dequantized weight plus the update (more memory).
    """
    for hooks in family_hooks():  # a family's own layers fold back by its own means, in place
        hooks.merge(model)
    adapted = [(n, mod) for n, mod in model.named_modules() if isinstance(mod, AdaptedLayer)]
    quantized = [n for n, mod in adapted if isinstance(mod, AdaptedQuantized)]
    if quantized and not dequantize:
        layer = model.get_submodule(quantized[0]).base_layer
        raise PeftError(
            f"cannot merge into quantized layers ({quantized[0]}: {type(layer).__name__}, {len(quantized)} in all); "
            "keep the adapters unmerged, or merge_peft(model, dequantize=True) for plain (larger) float layers"
        )
    for name, mod in adapted:
        _set_module(model, name, mod.merged(dequantize=dequantize))
    for attr in ("peft_config", "_peft_frozen_norms"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


@contextmanager
def disable_peft(model: nn.Module) -> Iterator[nn.Module]:
    """`with disable_peft(model):` the frozen base model runs alone, exactly, without a copy: adapters,
    trained biases and γ are bypassed and trained norms swapped back to their initial values. Everything
    is switched back on at exit, also after an exception. The task head (trained by every method) stays."""
    cfg = getattr(model, "peft_config", None)
    if not cfg:
        raise PeftError("model has no peft method applied; nothing to disable")
    if resolve_method(cfg["method"]).full:
        raise PeftError("full fine-tuning changed the weights in place; there is no adapter to switch off")
    layers = [m for m in model.modules() if isinstance(m, AdaptedLayer)]
    params = dict(model.named_parameters())
    swapped: list[tuple[nn.Parameter, torch.Tensor]] = []
    # the state before entry, restored at exit: an inner `with` inside an outer one leaves the adapters off
    was_off = [layer.__dict__.get("peft_enabled") is False for layer in layers]
    try:
        with ExitStack() as families:
            for hooks in family_hooks():  # a family's own layers, by its own switch
                families.enter_context(hooks.disable(model))
            for layer in layers:
                layer.peft_enabled = False
            for name, initial in getattr(model, "_peft_frozen_norms", {}).items():
                p = params[name]
                swapped.append((p, p.data))
                p.data = initial.to(p.device, p.dtype)
            yield model
    finally:
        for layer, off in zip(layers, was_off, strict=True):
            if not off:
                layer.__dict__.pop("peft_enabled", None)
        for p, data in reversed(swapped):
            p.data = data


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


def _owner_groups(model: nn.Module, heads: list[str]) -> dict[int, str]:
    """Map each parameter (by identity) to its group: adapter, bias, gamma, norms, head or weights.

    A parameter shared by the head and the body (tied embeddings: lm_head.weight is embed_tokens.weight)
    belongs to the head; otherwise the first module that holds it decides."""
    groups: dict[int, str] = {}
    hooks = family_hooks()
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, p in mod.named_parameters(recurse=False):
            if heads and under(mname, heads):
                g = "head"
            elif isinstance(mod, AdaptedLayer) and pname in ("bias", "gamma"):
                g = pname
            elif "adapter" in mname.split(".") or any(h.in_adapter(model, mname) for h in hooks):
                g = "adapter"
            elif is_norm(mod):
                g = "norms"
            elif pname == "bias":
                g = "bias"
            else:
                g = "weights"
            if g == "head" or id(p) not in groups:
                groups[id(p)] = g
    return groups


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and total parameters (each tensor once), adapted layers, and trainables by group."""
    cfg = getattr(model, "peft_config", None) or {}
    owner = _owner_groups(model, cfg.get("head", []))
    trainable = total = 0
    groups: dict[str, int] = {}
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            g = owner.get(id(p), "weights")
            groups[g] = groups.get(g, 0) + p.numel()
    hooks = family_hooks()
    adapted = sum(isinstance(m, AdaptedLayer) or any(h.is_layer(m) for h in hooks) for m in model.modules())
    return ParameterCount(trainable, total, adapted, groups)


__all__ = [
    "DEFAULT_HEADS",
    "ParameterCount",
    "apply_peft",
    "count_parameters",
    "disable_peft",
    "find_targets",
    "merge_peft",
    "validate_peft",
]
