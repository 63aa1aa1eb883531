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
Reading peft's folders is `hf_import`.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .layer import AdaptedLinear
from .registry import PeftError, resolve_method
from .targets import matches, under

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."  # peft's key prefix for the wrapped model's modules
EXPORTED_LAYERS = ("AdaptedLinear", "AdaptedConv1D", "AdaptedQuantized")  # quantized: same tensors
_warned_heads = False


def _peft():
    """peft, imported with bitsandbytes' import-time advice ("pip install kernels" for a faster CPU path) kept
    off the screen: peft imports bitsandbytes when installed, even for a model without quantized layers."""
    bnb_log = logging.getLogger("bitsandbytes")
    level = bnb_log.level
    bnb_log.setLevel(max(level, logging.ERROR))
    try:
        import peft
    except ImportError as e:  # a runtime dependency; reached only by a broken install
        raise PeftError("HF peft needs the `peft` package: pip install peft") from e
    finally:
        bnb_log.setLevel(level)
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
        if n and "adapter" not in n.split(".") and not under(n, heads) and n.rsplit(".", 1)[-1] in suffixes
    }
    return suffixes if candidates == set(names) else sorted(names)


def _head_modules(model: nn.Module, heads: list[str]) -> dict[str, nn.Module]:
    return {
        n: m for n, m in model.named_modules() if heads and matches(n, heads) and not under(n.rpartition(".")[0], heads)
    }


def _tied_partners(model: nn.Module, heads: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Modules outside the heads that share a head's parameter (tied lm_head / embed_tokens). peft would copy
    the head alone and leave the partner at its base value; saving both keeps the tied tensor whole."""
    shared = {id(p) for h in heads.values() for p in h.parameters()}
    return {
        n: m
        for n, m in model.named_modules()
        if n not in heads
        and not any(under(n, [h]) for h in heads)
        and any(id(p) in shared for p in m.parameters(recurse=False))
    }


def to_peft(model: nn.Module) -> tuple[Any, dict[str, Tensor]]:
    """The peft config object and the tensors of `model`'s adapter and trained head, keyed as peft saves them."""
    global _warned_heads
    cfg = model.peft_config
    hooks = resolve_method(cfg["method"]).hooks
    if hooks is not None:  # a family that built its own layers saves them: its own config and state dict
        config, tensors = hooks.save(model)
        config = copy.copy(config)
    else:
        config, tensors = _adapter_to_peft(model)
    heads = _head_modules(model, list(cfg.get("head") or []))
    tied = _tied_partners(model, heads)
    heads.update(tied)
    config.modules_to_save = list(heads) or None
    if tied and hasattr(config, "ensure_weight_tying"):  # peft then keeps them one tensor, as in our model
        config.ensure_weight_tying = True
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
    kinds_of_layer = {type(m).__name__ for m in layers.values()}
    other = sorted(n for n, m in layers.items() if type(m).__name__ not in EXPORTED_LAYERS)
    if other or {"AdaptedConv1D"} < kinds_of_layer:
        what = f"{other[0]!r} is a {type(layers[other[0]]).__name__}" if other else "this model mixes both"
        raise PeftError(
            f"format='peft' exports adapters of nn.Linear (quantized too) or of transformers Conv1D layers; {what}: "
            "save_peft(model, dir) in onelora's format"
        )
    if not layers:
        raise PeftError(
            f"method {cfg['method']!r} adapts no layer (only the head trains): save the model with save_pretrained"
        )
    heads, with_bias = list(cfg.get("head") or []), "bias" in method.extras
    kinds = {type(m.adapter).__name__ for m in layers.values()}
    common: dict[str, Any] = {
        "target_modules": _target_modules(model, list(layers), heads),
        "fan_in_fan_out": kinds_of_layer == {"AdaptedConv1D"},  # GPT-2's Conv1D: peft's flag, same A and B
    }
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
                delta = layer.bias.detach().float().cpu() - _base_bias(layer)
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


def _base_bias(layer: nn.Module) -> Tensor:
    """β0, the pretrained bias under a trained copy (zeros where the layer had none)."""
    b0 = layer.base_bias() if hasattr(layer, "base_bias") else None
    return torch.zeros(layer.out_features) if b0 is None else b0.detach().float().cpu()
