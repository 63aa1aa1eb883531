"""Saving and loading what a method trained, strictly: onelora's own format and HF peft's.

onelora's format: `peft_config.json` (the method, its options and targets) + `peft_weights.safetensors`
(the trained tensors under the model's own names). HF peft's: `adapter_config.json` +
`adapter_model.safetensors` (see `hf_format`). Loading checks every tensor both ways: the model's
adapters must find each of theirs in the file, the file must hold nothing they do not take, shapes
must agree and values be finite; a damaged file ends in one `PeftError` naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .api import apply_peft, refuse_foreign_layers
from .registry import PeftError
from .targets import names_list

CONFIG_FILE, WEIGHTS_FILE = "peft_config.json", "peft_weights.safetensors"


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a method trained: every trainable parameter, plus the adapters' persistent buffers."""
    params = dict(model.named_parameters())
    return {
        k: v
        for k, v in model.state_dict().items()
        if (k in params and params[k].requires_grad) or (k not in params and "adapter" in k.split(".")[:-1])
    }


def _write_atomic(out: Path, files: dict[str, Any]) -> None:
    """Write each file to a temporary name and rename it: a crash never leaves half a file under the real name."""
    from safetensors.torch import save_file

    if out.exists() and not out.is_dir():
        raise PeftError(f"{out} is a file; save_peft writes a folder: give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PeftError(f"cannot create the adapter folder {out} ({e.strerror}); choose a writable path") from e
    for name, content in files.items():  # weights first: a config only ever sits beside complete weights
        tmp = out / f".{name}.{os.getpid()}.tmp"
        if isinstance(content, dict):
            save_file(content, str(tmp), metadata={"format": "pt"})
        else:
            tmp.write_text(content)
        os.replace(tmp, out / name)


def save_peft(model: nn.Module, path: str | os.PathLike, format: Literal["onelora", "peft"] = "onelora") -> Path:
    """Write the adapter into directory `path`; returns it.

    format="onelora": `peft_weights.safetensors` + `peft_config.json`, for every method.
    format="peft": HF peft's `adapter_model.safetensors` + `adapter_config.json`, which
    `peft.PeftModel.from_pretrained` loads with the same outputs (methods with a peft form only).
    """
    cfg = getattr(model, "peft_config", None)
    if not cfg or "method" not in cfg:
        raise PeftError("model has no peft method applied; call apply_peft first")
    out = Path(path)
    # load_peft reads onelora's files first: the other format's older files beside new ones would win silently
    other = {"onelora": ("adapter_config.json", "HF peft's"), "peft": (CONFIG_FILE, "onelora's")}.get(format)
    if other and (out / other[0]).is_file():
        raise PeftError(
            f"{out} already holds an adapter in {other[1]} format ({other[0]}); load_peft reads one format per "
            "folder: save into another folder"
        )
    if format == "peft":
        from .hf_format import PEFT_CONFIG, PEFT_WEIGHTS, config_dict, to_peft

        config, tensors = to_peft(model)
        weights = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        _write_atomic(out, {PEFT_WEIGHTS: weights, PEFT_CONFIG: json.dumps(config_dict(config), indent=2)})
        return out
    if format != "onelora":
        raise PeftError(f"unknown adapter format {format!r}; valid: onelora, peft")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in peft_state_dict(model).items()}
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    record = json.dumps({"format": "onelora-peft/1", **cfg, "shapes": shapes}, indent=1)
    _write_atomic(out, {WEIGHTS_FILE: tensors, CONFIG_FILE: record})
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PeftError(f"{path} is not readable JSON ({e}); the adapter folder is damaged: save it again") from e
    if not isinstance(data, dict):
        raise PeftError(f"{path} holds a JSON {type(data).__name__}, not an adapter config; save the adapter again")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PeftError(
            f"{path} is not a readable safetensors file ({reason}); truncated or damaged: save it again"
        ) from e
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PeftError(
                f"{path}: tensor {key!r} holds NaN or infinite values (a diverged run?); it cannot be loaded"
            )
    return tensors


def load_state_strict(model: nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Load `tensors` into the model's adapters if they are exactly what those adapters hold."""
    expected = peft_state_dict(model)
    missing = expected.keys() - tensors.keys()
    if missing:
        raise PeftError(
            f"{where}: {len(missing)} of the {len(expected)} tensors this model's adapters hold are missing "
            f"({names_list(list(missing))}); the file is incomplete or was saved from a smaller model"
        )
    extra = tensors.keys() - expected.keys()
    if extra:
        raise PeftError(
            f"{where}: {len(extra)} tensors fit no adapter of this model ({names_list(list(extra))}); "
            "saved from a bigger model, another architecture or other targets?"
        )
    for key, t in tensors.items():
        if tuple(t.shape) != tuple(expected[key].shape):
            raise PeftError(
                f"{where}: {key!r} is {tuple(t.shape)} in the file and {tuple(expected[key].shape)} in the model "
                "(saved from another architecture or with other options?)"
            )
    if not any(t.is_meta for t in expected.values()):  # a meta model (the dry run) has nothing to fill
        model.load_state_dict(tensors, strict=False)


def load_peft(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply the saved method to `model` (if not yet applied) and load its weights; returns the model.

    Reads onelora's format and HF peft's adapter folders of LoRA, DoRA, VeRA and MiSS(r=1).
    """
    src = Path(path)
    refuse_foreign_layers(model, f"load_peft({str(path)!r})")
    if (src / CONFIG_FILE).is_file() or (src / WEIGHTS_FILE).is_file():
        return _load_onelora(model, src)
    from .hf_format import PEFT_CONFIG, PEFT_WEIGHTS
    from .hf_import import from_peft

    if (src / PEFT_CONFIG).is_file():
        if not (src / PEFT_WEIGHTS).is_file():
            raise PeftError(f"{src} has {PEFT_CONFIG} but no {PEFT_WEIGHTS} (only the safetensors form is read)")
        raw = _read_json(src / PEFT_CONFIG)
        tensors = _read_tensors(src / PEFT_WEIGHTS)
        state = from_peft(model, raw, tensors, str(src))
        load_state_strict(model, state, src / PEFT_WEIGHTS)
        return model
    # peft's save_pretrained puts an adapter not named "default" into a subfolder of that name
    inner = sorted(p.parent.name for p in src.glob(f"*/{PEFT_CONFIG}")) if src.is_dir() else []
    hint = f"; its subfolders {names_list(inner)} hold peft adapters: give one of them" if inner else ""
    raise PeftError(
        f"{src} is not a saved adapter: expected {CONFIG_FILE} + {WEIGHTS_FILE} (save_peft) "
        f"or {PEFT_CONFIG} + {PEFT_WEIGHTS} (HF peft){hint}"
    )


def _load_onelora(model: nn.Module, src: Path) -> nn.Module:
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (src / name).is_file():
            raise PeftError(f"{src} lacks {name}: an adapter saved by save_peft has {CONFIG_FILE} and {WEIGHTS_FILE}")
    cfg = _read_json(src / CONFIG_FILE)
    if not isinstance(cfg.get("method"), str):
        raise PeftError(f"{src / CONFIG_FILE} names no method; it is not a config written by save_peft")
    options, dtype = cfg.get("options", {}), getattr(torch, str(cfg.get("dtype", "float32")), None)
    if not isinstance(options, dict) or not isinstance(dtype, torch.dtype):
        field = "options" if not isinstance(options, dict) else "dtype"
        raise PeftError(f"{src / CONFIG_FILE}: {field}={cfg.get(field)!r} is damaged; save the adapter again")
    tensors = _read_tensors(src / WEIGHTS_FILE)
    if not getattr(model, "peft_config", None):
        apply_peft(
            model,
            cfg["method"],
            target_modules=cfg.get("target_modules"),
            exclude_modules=cfg.get("exclude_modules"),
            head=cfg.get("head"),
            seed=cfg.get("seed", 0),
            dtype=dtype,
            **options,
        )
    elif model.peft_config["method"] != cfg["method"]:
        raise PeftError(f"adapter in {src} is {cfg['method']!r} but the model has {model.peft_config['method']!r}")
    load_state_strict(model, tensors, src / WEIGHTS_FILE)
    return model
