"""Reading HF peft adapter folders (LoRA, DoRA, VeRA, MiSS r=1) into onelora's layers, exactly.

MiSS(r=1) is 1LoRA (b = miss_block); a LoRA r=1 whose lora_A are all ones is 1LoRA too, so an exported
1LoRA round-trips as 1LoRA; a zero LoRA with lora_bias is BitFit. The file's layers must be exactly those
its target_modules select in this model (peft's own matching rule), every tensor is mapped to our name,
and the strict loader in `serialization` then checks both directions, shapes and values.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .api import apply_peft
from .bases import layer_kind
from .hf_format import PREFIX, _base_bias, _head_modules, _peft, _tied_partners
from .layer import AdaptedLayer
from .registry import PeftError
from .targets import names_list

ADAPTER_PARTS = ("lora_", "vera_", "miss_")
READABLE = "LORA (with or without DoRA), VERA and MISS with r=1"


def _peft_config(raw: dict[str, Any], where: str) -> Any:
    peft = _peft()
    ptype = raw.get("peft_type")
    if ptype not in ("LORA", "VERA", "MISS"):
        raise PeftError(
            f"{where}: peft type {ptype!r} cannot be read into onelora's layers; load_peft reads {READABLE} "
            f"(load other types with peft.PeftModel.from_pretrained, or train them with peft=hf_<name>)"
        )
    cls = peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING[ptype]
    try:
        check = getattr(cls, "check_kwargs", None)  # peft's own clean-up of older configs' fields
        config = cls.from_peft_type(**(check(**raw) if check else raw))
    except (TypeError, ValueError) as e:
        raise PeftError(f"{where}: not a valid {cls.__name__}: {e}") from e
    # peft checks few types when it reads a config; a damaged field would fail later as a TypeError
    r, alpha, targets = config.r, getattr(config, "lora_alpha", 1), config.target_modules
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise PeftError(f"{where}: r={r!r} in its config is not a positive integer; the adapter folder is damaged")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise PeftError(f"{where}: lora_alpha={alpha!r} in its config is not a number; the adapter folder is damaged")
    if not isinstance(targets, (str, list, set, tuple)):
        raise PeftError(f"{where}: target_modules={targets!r} in its config names no layers; the folder is damaged")
    return config


def _unsupported(config: Any) -> str | None:
    """Why this LoRA/VeRA/MiSS config has no exact form in onelora's layers (None if it has one)."""
    kind = type(config).__name__
    if getattr(config, "bias", "none") != "none":
        return f"bias={config.bias!r} (base biases inside the adapter)"
    # init_weights True/False only choose the starting block and "mini" tiles a shorter one: with r=1 each
    # computes b·(1ᵀx); "bat" is another forward
    if kind == "MissConfig" and (config.r != 1 or config.init_weights == "bat"):
        return f"MiSS with r={config.r}, init_weights={config.init_weights!r} (only r=1 without 'bat' is 1LoRA)"
    if kind == "LoraConfig":
        if config.rank_pattern or config.alpha_pattern:
            return "per-layer rank_pattern/alpha_pattern"
        for flag in ("target_parameters", "layer_replication", "alora_invocation_tokens", "use_qalora", "use_bdlora"):
            if getattr(config, flag, None):
                return f"{flag}"
    return None


def _readable(layer: nn.Module) -> bool:
    """nn.Linear (quantized ones too) and transformers' Conv1D, bare or already wrapped by the same method."""
    return layer_kind(layer) in ("linear", "conv1d", "quantized") or isinstance(layer, AdaptedLayer)


def _adapted_names(keys: list[str]) -> set[str]:
    """Modules that hold adapter tensors: the part of each key before its first lora_/vera_/miss_ component."""
    out = set()
    for key in keys:
        parts = key.split(".")
        cut = next((i for i, p in enumerate(parts) if p.startswith(ADAPTER_PARTS)), None)
        if cut:
            out.add(".".join(parts[:cut]))
    return out


def _expected_names(model: nn.Module, config: Any) -> set[str]:
    """The modules peft itself would adapt in `model` with this config."""
    from peft.tuners.tuners_utils import check_target_module_exists

    wrapped = [n for n, m in model.named_modules() if isinstance(m, AdaptedLayer)]  # the method already applied
    names = [n for n, _ in model.named_modules() if n and not any(n.startswith(w + ".") for w in wrapped)]
    if config.target_modules == "all-linear":  # peft's rule: nn.Linear and Conv1D layers but the output layer
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        return {n for n in names if _readable(model.get_submodule(n)) and model.get_submodule(n) is not out}
    return {n for n in names if bool(check_target_module_exists(config, n))}


def from_peft(model: nn.Module, raw: dict[str, Any], tensors: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """Apply the onelora method equal to the peft adapter to `model`; return its state keyed as our model's."""
    applied = getattr(model, "peft_config", None)
    if applied and str(applied.get("method", "")).startswith("hf_"):
        raise PeftError(
            f"{where}: a peft adapter folder loads into onelora's own methods, not into {applied['method']!r} "
            "(built by peft): choose peft=lora, dora, vera or onelora (for MiSS r=1), or give an adapter "
            f"saved by save_peft in onelora's format"
        )
    config = _peft_config(raw, where)
    why = _unsupported(config)
    if why:
        raise PeftError(
            f"{where}: {type(config).__name__} with {why} has no exact form in onelora; load_peft reads {READABLE}"
        )
    ours = {k.removeprefix(PREFIX): v for k, v in tensors.items() if k.startswith(PREFIX)}
    shared = {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}
    names = _adapted_names(list(ours))
    module_names = {n for n, _ in model.named_modules()}
    foreign = sorted(names - module_names)
    if foreign:
        raise PeftError(
            f"{where}: adapts {names_list(foreign)}, which this model lacks (saved from another architecture?)"
        )
    wrong = sorted(n for n in names | _expected_names(model, config) if not _readable(model.get_submodule(n)))
    if wrong:
        layer = model.get_submodule(wrong[0])
        raise PeftError(
            f"{where}: adapts {wrong[0]!r}, a {type(layer).__name__}; load_peft reads adapters of nn.Linear "
            "(quantized too) and transformers Conv1D layers"
        )
    expected = _expected_names(model, config)
    unselected = sorted(names - expected)
    if unselected:  # peft would create no adapter there and drop these tensors
        raise PeftError(
            f"{where}: holds tensors for {names_list(unselected)}, which its target_modules "
            f"{config.target_modules!r} do not select in this model; the config does not match the weights"
        )
    missing = sorted(expected - names)
    if missing:
        raise PeftError(
            f"{where}: its target_modules select {len(expected)} layers of this model but it holds tensors for "
            f"{len(names)}: missing {names_list(missing)} (saved from a smaller model?)"
        )
    kind, opts, seed = _method(config, ours, names)
    if applied:  # the method is already on the model (a run's init_adapter): the adapter must be the same method
        _check_same_method(model, applied, kind, config, seed, "base_model.vera_A" in shared, where)
        heads = _with_tied(model, list(_head_modules(model, list(applied.get("head") or []))), ours, where)
    else:
        heads = sorted(
            {n for n in module_names for k in ours if n and k.startswith(n + ".") and _is_saved_head(config, n)}
        )
        heads = _with_tied(model, heads, ours, where)
        apply_peft(
            model, kind, target_modules=sorted(names), exclude_modules=heads, head=heads or None, seed=seed, **opts
        )
    return _state(model, kind, config, ours, shared, names, heads, where)


def _check_same_method(
    model: nn.Module, applied: dict[str, Any], kind: str, config: Any, seed: int, projections: bool, where: str
) -> None:
    """The adapter's method and scale equal the model's (shapes are checked with the tensors)."""
    if applied["method"] != kind:
        raise PeftError(
            f"{where}: the adapter is {kind!r} (peft {type(config).__name__}) but the model has "
            f"{applied['method']!r}; choose peft={kind}"
        )
    layer = next(m for m in model.modules() if isinstance(m, AdaptedLayer))
    scale = getattr(layer.adapter, "scaling", None)
    if scale is not None and not math.isclose(scale, _scale(config), rel_tol=1e-6):
        raise PeftError(
            f"{where}: the adapter's LoRA scale is {_scale(config):g}, the model's {scale:g}: set alpha to match"
        )
    if kind == "vera" and not projections and applied.get("seed") != seed:
        raise PeftError(
            f"{where}: VeRA projections drawn from projection_prng_key={seed}, the model's from seed={applied.get('seed')}"
        )


def _with_tied(model: nn.Module, heads: list[str], ours: dict[str, Tensor], where: str) -> list[str]:
    """The heads plus the modules tied to them (lm_head / embed_tokens), which the file must hold too: peft
    unties a head saved alone and keeps its partner at the base value, which one shared tensor cannot express."""
    partners = _tied_partners(model, {h: model.get_submodule(h) for h in heads})
    absent = sorted(p for p in partners if not any(k.startswith(p + ".") for k in ours))
    if absent:
        raise PeftError(
            f"{where}: its modules_to_save holds {names_list(heads)} alone, which this model ties to "
            f"{names_list(absent)} (tied embeddings): peft unties them when it loads, onelora keeps one tensor; "
            "load it with peft.PeftModel.from_pretrained, or save both in modules_to_save with ensure_weight_tying=True"
        )
    return sorted({*heads, *partners})


def _is_saved_head(config: Any, name: str) -> bool:
    return any(name == m or name.endswith("." + m) for m in (config.modules_to_save or []))


def _method(config: Any, ours: dict[str, Tensor], names: set[str]) -> tuple[str, dict[str, Any], int]:
    kind = type(config).__name__
    if kind == "MissConfig":
        return "onelora", {}, 0
    if kind == "VeraConfig":
        return (
            "vera",
            {"rank": config.r, "d_initial": config.d_initial, "dropout": config.vera_dropout},
            config.projection_prng_key,
        )
    # LoRA: our scale is alpha/r, so pass the alpha that gives peft's (rsLoRA included)
    scale = _scale(config)
    bias = "_bias" if config.lora_bias else ""
    a_all = [ours.get(f"{n}.lora_A.weight") for n in names]
    if not config.use_dora and config.r == 1 and all(a is not None and bool((a == 1).all()) for a in a_all):
        return "onelora" + bias, {}, 0  # our own 1LoRA export: b = s·B
    b_all = [ours.get(f"{n}.lora_B.weight") for n in names]
    if bias and all(t is not None and not t.any() for t in a_all + b_all):
        return "bitfit", {}, 0
    opts = {"rank": config.r, "alpha": scale * config.r, "dropout": config.lora_dropout}
    return ("dora" if config.use_dora else "lora") + bias, opts, 0


def _scale(config: Any) -> float:
    """peft's LoRA scale: alpha/r, or alpha/√r with rsLoRA."""
    return config.lora_alpha / (config.r**0.5 if config.use_rslora else config.r)


def _state(
    model: nn.Module,
    kind: str,
    config: Any,
    ours: dict[str, Tensor],
    shared: dict[str, Tensor],
    names: set[str],
    heads: list[str],
    where: str,
) -> dict[str, Tensor]:
    """Our model's keys for every tensor of the file; tensors no layer takes stay, for the strict check to name."""
    rest, state = dict(ours), {}
    miss = type(config).__name__ == "MissConfig"
    for name, layer in _layers(model, names).items():

        def take(suffix: str, name: str = name) -> Tensor | None:
            return rest.pop(f"{name}.{suffix}", None)

        if miss:  # miss_block (1, d): b; with init_weights="mini" (1, mini_r), tiled along d as peft does
            block = take("miss_block")
            if config.init_weights == "mini" and block is not None and layer.out_features % block.shape[-1] == 0:
                block = block.repeat(1, layer.out_features // block.shape[-1])
            state[f"{name}.adapter.b"] = _column(block, transpose=True)
        elif kind.startswith("onelora"):  # LoRA r=1 with A = 1ᵀ: b = s·B
            take("lora_A.weight")
            b = _column(take("lora_B.weight"))
            state[f"{name}.adapter.b"] = None if b is None else _scale(config) * b
        elif kind == "bitfit":  # A = B = 0 (checked): only the bias change
            take("lora_A.weight"), take("lora_B.weight")
        elif kind == "vera":
            state[f"{name}.adapter.lambda_b"] = take("vera_lambda_b")
            state[f"{name}.adapter.lambda_d"] = take("vera_lambda_d")
        else:
            state[f"{name}.adapter.lora_A"] = take("lora_A.weight")
            state[f"{name}.adapter.lora_B"] = take("lora_B.weight")
            if kind.startswith("dora"):
                state[f"{name}.adapter.magnitude"] = take("lora_magnitude_vector")
        if kind.endswith("_bias") or kind == "bitfit":  # peft adds s·lora_B.bias to the base model's β0
            change = take("lora_B.bias")
            if change is not None:  # a meta model (dry run) checks the shape only
                state[f"{name}.bias"] = (
                    change if layer.bias.is_meta else _base_bias(layer) + _scale(config) * change.float()
                )
    if kind == "vera":
        _vera_projections(model, names, shared)
        shared = {k: v for k, v in shared.items() if k not in ("base_model.vera_A", "base_model.vera_B")}
    first_name = {}  # a tied tensor is loaded under its first name (the strict check's key), once
    for pname, p in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        first_name.setdefault(id(p), pname)
    tensor_of = dict([*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)])
    for h in heads:
        for pname in model.get_submodule(h).state_dict():
            t = rest.pop(f"{h}.{pname}", None)
            key = first_name.get(id(tensor_of.get(f"{h}.{pname}")), f"{h}.{pname}")
            if t is not None and state.get(key) is not None and not torch.equal(state[key], t):
                raise PeftError(
                    f"{where}: different values for {key!r} and {h + '.' + pname!r}, one tied tensor in this model; "
                    "this model shares one tensor between them"
                )
            state[key] = t if state.get(key) is None else state[key]
    state = {k: v for k, v in state.items() if v is not None}  # absent ones: named by the strict check
    return {**state, **{f"{PREFIX}{k}": v for k, v in rest.items()}, **shared}


def _column(t: Tensor | None, transpose: bool = False) -> Tensor | None:
    """A (d, 1) tensor (or (1, d) with transpose) as a vector; any other shape is left for the shape check."""
    if t is None:
        return None
    t = t.T if transpose and t.dim() == 2 else t
    return t[:, 0] if t.dim() == 2 and t.shape[1] == 1 else t


def _layers(model: nn.Module, names: set[str]) -> dict[str, AdaptedLayer]:
    return {n: model.get_submodule(n) for n in sorted(names)}


def _vera_projections(model: nn.Module, names: set[str], shared: dict[str, Tensor]) -> None:
    """Slice the saved shared projections into each layer (they equal the ones drawn from the seed, if peft's RNG agrees)."""
    a, b = shared.get("base_model.vera_A"), shared.get("base_model.vera_B")
    if a is None or b is None:
        return  # save_projection=False: the layers' projections were drawn from projection_prng_key, as peft does
    for name, layer in _layers(model, names).items():
        ad = layer.adapter
        if a.shape[0] != ad.vera_A.shape[0] or a.shape[1] < layer.in_features or b.shape[0] < layer.out_features:
            raise PeftError(f"adapter's VeRA projections {tuple(a.shape)}, {tuple(b.shape)} do not fit layer {name!r}")
        ad.vera_A.copy_(a[:, : layer.in_features].to(ad.vera_A.dtype))
        ad.vera_B.copy_(b[: layer.out_features].to(ad.vera_B.dtype))
