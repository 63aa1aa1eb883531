"""HF peft's adapter format (`adapter_config.json` + `adapter_model.safetensors`), both ways.

Export writes what `peft.PeftModel.from_pretrained` loads with the same outputs:

    onelora          LoRA r=1, lora_A = 1ᵀ (a row of ones), lora_B = b, lora_alpha = r = 1
    onelora_random   LoRA r=1, lora_A = vᵀ
    lora, dora       LoraConfig (use_dora), alpha chosen so that alpha/r is our scale
    vera             VeraConfig with the same projections (saved, save_projection=True)
    mora1            LoRA r = r̂ per layer (rank_pattern): lora_A = the summation matrix, lora_B = M's rows tiled
    + bias / bitfit  lora_bias = (β - β0)/s (B = 0 and A = 0 for BitFit alone)
    head             modules_to_save

MoRA type 6, DiffFit's γ and trained norms have no peft form: the user merges and saves the model instead.
Import reads LoRA, DoRA, VeRA and MiSS(r=1) adapters into our layers (MiSS(r=1) is 1LoRA; a LoRA r=1
whose lora_A are all ones is 1LoRA too, so a 1LoRA adapter round-trips as 1LoRA).
"""

from __future__ import annotations

import copy
import re
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .api import _match, _under, apply_peft
from .layer import AdaptedLinear
from .registry import PeftError, resolve_method
from .serialization import names_list

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."  # peft's key prefix for the wrapped model's modules
ADAPTER_PARTS = ("lora_", "vera_", "miss_")
READABLE = "LORA (with or without DoRA), VERA and MISS with r=1"
_warned_heads = False


def _peft():
    try:
        import peft
    except ImportError as e:  # a runtime dependency; reached only by a broken install
        raise PeftError("HF peft's format needs the `peft` package: pip install peft") from e
    return peft


def _no_peft_form(method: str, what: str) -> PeftError:
    return PeftError(
        f"HF peft has no adapter that computes {method!r} ({what}); merge_peft(model) and then "
        f"model.save_pretrained(dir), or save_peft(model, dir) in onelora's format"
    )


# --- export ---------------------------------------------------------------------------------
def _summation_matrix(r: int, k: int) -> Tensor:
    """MoRA type 1's compression as a matrix: row i sums the input features j ≡ i (mod r̂), wrapping around."""
    n = -(-k // r) * r
    idx = torch.arange(n)
    comp = torch.zeros(r, k)
    comp.index_put_((idx % r, idx % k), torch.ones(n), accumulate=True)
    return comp


def _lora_factors(layer: AdaptedLinear) -> tuple[Tensor, Tensor, float]:
    """(A, B, scale) with B A · scale = the layer's ΔW, for every adapter LoRA can express."""
    a, k, d = layer.adapter, layer.in_features, layer.out_features
    kind = type(a).__name__
    if a is None:  # BitFit alone: a zero LoRA carries the bias change
        return torch.zeros(1, k), torch.zeros(d, 1), 1.0
    if kind == "OneLoRA":
        return torch.ones(1, k), a.b.detach().float()[:, None], 1.0
    if kind == "OneLoRARandom":
        return a.v.detach().float()[None, :], a.b.detach().float()[:, None], 1.0
    if kind in ("LoRA", "DoRA"):
        return a.lora_A.detach().float(), a.lora_B.detach().float(), float(a.scaling)
    if kind == "MoRA" and a.mora_type == 1:
        rows = torch.arange(d) % a.r
        return _summation_matrix(a.r, k), a.M.detach().float()[rows], 1.0
    raise _no_peft_form(kind, "MoRA type 6 rotates each input chunk" if kind == "MoRA" else "no LoRA form")


def _target_modules(model: nn.Module, names: list[str], heads: list[str]) -> list[str]:
    """Name suffixes when they select exactly the adapted layers under peft's rule, else the full names."""
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    candidates = {
        n
        for n, _ in model.named_modules()
        if n and "adapter" not in n.split(".") and not _under(n, heads) and n.rsplit(".", 1)[-1] in suffixes
    }
    return suffixes if candidates == set(names) else sorted(names)


def _head_modules(model: nn.Module, heads: list[str]) -> dict[str, nn.Module]:
    return {
        n: m for n, m in model.named_modules() if heads and _match(n, heads) and not _under(n.rpartition(".")[0], heads)
    }


def to_peft(model: nn.Module) -> tuple[Any, dict[str, Tensor]]:
    """The peft config object and the tensors of `model`'s adapter and trained head, keyed as peft saves them."""
    global _warned_heads
    cfg = model.peft_config
    if cfg["method"].startswith("hf_"):  # built by peft itself: its own config and state dict
        from .hf import hf_adapter

        config, tensors = hf_adapter(model)
        config = copy.copy(config)
    else:
        config, tensors = _adapter_to_peft(model)
    heads = _head_modules(model, list(cfg.get("head") or []))
    config.modules_to_save = list(heads) or None
    config.base_model_name_or_path = getattr(getattr(model, "config", None), "name_or_path", None) or None
    config.inference_mode = True
    for hname, head in heads.items():
        for pname, t in head.state_dict().items():
            tensors[f"{PREFIX}{hname}.{pname}"] = t.detach()
    if heads and not _warned_heads:
        _warned_heads = True
        warnings.warn(
            "the adapter carries a trained head (modules_to_save): peft loads it, but vLLM refuses such adapters",
            UserWarning,
            stacklevel=3,
        )
    return config, tensors


def _adapter_to_peft(model: nn.Module) -> tuple[Any, dict[str, Tensor]]:
    peft = _peft()
    cfg = model.peft_config
    method = resolve_method(cfg["method"])
    if method.full:
        raise PeftError(
            f"method {cfg['method']!r} trains every weight, which no peft adapter holds: "
            "save the model itself with save_pretrained"
        )
    if "gamma" in method.extras:
        raise _no_peft_form(cfg["method"], "DiffFit's output scale γ")
    if "norms" in method.extras:
        raise _no_peft_form(cfg["method"], "trained normalisation layers")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLinear) or hasattr(m, "peft_enabled")}
    other = sorted(n for n, m in layers.items() if type(m) is not AdaptedLinear)
    if other:
        kind = type(layers[other[0]]).__name__
        raise PeftError(
            f"format='peft' exports adapters of nn.Linear layers; {other[0]!r} is a {kind}: save_peft(model, dir) in onelora's format"
        )
    if not layers:
        raise PeftError(
            f"method {cfg['method']!r} adapts no layer (only the head trains): save the model with save_pretrained"
        )
    heads, with_bias = list(cfg.get("head") or []), "bias" in method.extras
    kinds = {type(m.adapter).__name__ for m in layers.values()}
    common: dict[str, Any] = {"target_modules": _target_modules(model, list(layers), heads)}
    opts = cfg.get("options", {})
    tensors: dict[str, Tensor] = {}
    if kinds == {"VeRA"}:
        if with_bias:
            raise _no_peft_form(cfg["method"], "VeRA with trained biases")
        for name, layer in layers.items():
            tensors[f"{PREFIX}{name}.vera_lambda_b"] = layer.adapter.lambda_b.detach().float()
            tensors[f"{PREFIX}{name}.vera_lambda_d"] = layer.adapter.lambda_d.detach().float()
        # the shared projections are the widest layer's A and the tallest layer's B (each layer holds a slice)
        widest = max(layers.values(), key=lambda m: m.in_features).adapter
        tallest = max(layers.values(), key=lambda m: m.out_features).adapter
        tensors["base_model.vera_A"] = widest.vera_A.detach().float()
        tensors["base_model.vera_B"] = tallest.vera_B.detach().float()
        config = peft.VeraConfig(
            r=int(opts.get("rank", 1)),
            projection_prng_key=int(cfg.get("seed", 0)),
            d_initial=float(opts.get("d_initial", 0.1)),
            vera_dropout=float(opts.get("dropout", 0.0)),
            save_projection=True,
            **common,
        )
    else:
        dora = kinds == {"DoRA"}
        if dora and with_bias:
            raise _no_peft_form(cfg["method"], "DoRA with trained biases")
        ranks, alphas = {}, {}
        for name, layer in layers.items():
            a, b, scale = _lora_factors(layer)
            tensors[f"{PREFIX}{name}.lora_A.weight"] = a
            tensors[f"{PREFIX}{name}.lora_B.weight"] = b
            ranks[name], alphas[name] = a.shape[0], scale * a.shape[0]
            if dora:
                tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = layer.adapter.magnitude.detach().float()
            if with_bias:
                # peft adds lora_B's bias times the scale; the base model it loads into still has β0
                delta = layer.bias.detach().float() - _base_bias(layer)
                tensors[f"{PREFIX}{name}.lora_B.bias"] = delta / scale
        r = max(set(ranks.values()), key=list(ranks.values()).count)
        alpha = max(set(alphas.values()), key=list(alphas.values()).count)
        config = peft.LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=float(opts.get("dropout", 0.0)),
            use_dora=dora,
            lora_bias=with_bias,
            rank_pattern={re.escape(n): v for n, v in ranks.items() if v != r},
            alpha_pattern={re.escape(n): v for n, v in alphas.items() if v != alpha},
            **common,
        )
    return config, tensors


def config_dict(config: Any) -> dict[str, Any]:
    """The config as peft's save_pretrained writes it (sets as lists)."""
    out = config.to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in out.items()}


# --- import ---------------------------------------------------------------------------------
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
        return cls.from_peft_type(**(check(**raw) if check else raw))
    except (TypeError, ValueError) as e:
        raise PeftError(f"{where}: not a valid {cls.__name__}: {e}") from e


def _unsupported(config: Any, where: str) -> str | None:
    """Why this LoRA/VeRA/MiSS config has no exact form in onelora's layers (None if it has one)."""
    kind = type(config).__name__
    if getattr(config, "bias", "none") != "none":
        return f"bias={config.bias!r} (base biases inside the adapter)"
    if getattr(config, "fan_in_fan_out", False):
        return "fan_in_fan_out=True (Conv1D layers)"
    if kind == "MissConfig" and (config.r != 1 or config.init_weights is not True):
        return f"MiSS with r={config.r}, init_weights={config.init_weights!r} (only r=1, init_weights=True is 1LoRA)"
    if kind == "LoraConfig":
        if config.rank_pattern or config.alpha_pattern:
            return "per-layer rank_pattern/alpha_pattern"
        for flag in ("target_parameters", "layer_replication", "alora_invocation_tokens", "use_qalora", "use_bdlora"):
            if getattr(config, flag, None):
                return f"{flag}"
    return None


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

    names = [n for n, _ in model.named_modules() if n]
    if config.target_modules == "all-linear":
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        return {n for n in names if isinstance(model.get_submodule(n), nn.Linear) and model.get_submodule(n) is not out}
    return {n for n in names if bool(check_target_module_exists(config, n))}


def from_peft(model: nn.Module, raw: dict[str, Any], tensors: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """Apply the onelora method equal to the peft adapter to `model`; return its state keyed as our model's."""
    config = _peft_config(raw, where)
    why = _unsupported(config, where)
    if why:
        raise PeftError(
            f"{where}: {type(config).__name__} with {why} has no exact form in onelora; load_peft reads {READABLE}"
        )
    if getattr(model, "peft_config", None):
        raise PeftError(
            f"{where}: a peft adapter loads into a model without a method; this one has {model.peft_config['method']!r}"
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
    wrong = sorted(n for n in names | _expected_names(model, config) if type(model.get_submodule(n)) is not nn.Linear)
    if wrong:
        layer = model.get_submodule(wrong[0])
        raise PeftError(
            f"{where}: adapts {wrong[0]!r}, a {type(layer).__name__}; load_peft reads adapters of nn.Linear layers"
        )
    expected = _expected_names(model, config)
    missing = sorted(expected - names)
    if missing:
        raise PeftError(
            f"{where}: its target_modules select {len(expected)} layers of this model but it holds tensors for "
            f"{len(names)}: missing {names_list(missing)} (saved from a smaller model?)"
        )
    heads = sorted({n for n in module_names for k in ours if k.startswith(n + ".") and n and _is_saved_head(config, n)})
    kind, opts, seed = _method(config, ours, names)
    apply_peft(model, kind, target_modules=sorted(names), exclude_modules=heads, head=heads or None, seed=seed, **opts)
    return _state(model, kind, config, ours, shared, names, heads)


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
) -> dict[str, Tensor]:
    """Our model's keys for every tensor of the file; tensors no layer takes stay, for the strict check to name."""
    rest, state = dict(ours), {}
    miss = type(config).__name__ == "MissConfig"
    for name, layer in _layers(model, names).items():

        def take(suffix: str, name: str = name) -> Tensor | None:
            return rest.pop(f"{name}.{suffix}", None)

        if miss:  # miss_block (1, d): b
            block = take("miss_block")
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
            state[f"{name}.bias"] = None if change is None else _base_bias(layer) + _scale(config) * change.float()
    if kind == "vera":
        _vera_projections(model, names, shared)
        shared = {k: v for k, v in shared.items() if k not in ("base_model.vera_A", "base_model.vera_B")}
    for h in heads:
        for pname in model.get_submodule(h).state_dict():
            state[f"{h}.{pname}"] = rest.pop(f"{h}.{pname}", None)
    state = {k: v for k, v in state.items() if v is not None}  # absent ones: named by the strict check
    return {**state, **{f"{PREFIX}{k}": v for k, v in rest.items()}, **shared}


def _base_bias(layer: nn.Module) -> Tensor:
    """β0, the pretrained bias under a trained copy (zeros where the layer had none)."""
    b0 = layer.base_bias() if hasattr(layer, "base_bias") else None
    return torch.zeros(layer.out_features) if b0 is None else b0.detach().float().cpu()


def _column(t: Tensor | None, transpose: bool = False) -> Tensor | None:
    """A (d, 1) tensor (or (1, d) with transpose) as a vector; any other shape is left for the shape check."""
    if t is None:
        return None
    t = t.T if transpose and t.dim() == 2 else t
    return t[:, 0] if t.dim() == 2 and t.shape[1] == 1 else t


def _layers(model: nn.Module, names: set[str]) -> dict[str, AdaptedLinear]:
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
