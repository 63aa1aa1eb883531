"""Saving and loading what a method trained: onelora's own adapter format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .api import apply_peft
from .registry import PeftError

CONFIG_FILE, WEIGHTS_FILE = "peft_config.json", "peft_weights.safetensors"


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a method trained: every trainable parameter, plus the adapters' persistent buffers."""
    params = dict(model.named_parameters())
    return {
        k: v
        for k, v in model.state_dict().items()
        if (k in params and params[k].requires_grad) or (k not in params and "adapter" in k.split(".")[:-1])
    }


def save_peft(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `peft_weights.safetensors` and `peft_config.json` into directory `path`."""
    from safetensors.torch import save_file

    cfg = getattr(model, "peft_config", None)
    if not cfg:
        raise PeftError("model has no peft method applied; call apply_peft first")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in peft_state_dict(model).items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    tmp = out / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps({"format": "onelora-peft/1", **cfg, "shapes": shapes}, indent=1))
    os.replace(tmp, out / CONFIG_FILE)
    return out


def load_peft(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply the saved method to `model` (if not yet applied) and load its weights; returns the model."""
    from safetensors.torch import load_file

    src = Path(path)
    if not (src / CONFIG_FILE).is_file() or not (src / WEIGHTS_FILE).is_file():
        raise PeftError(
            f"{src} is not a saved adapter: expected {CONFIG_FILE} and {WEIGHTS_FILE} (written by save_peft)"
        )
    cfg = json.loads((src / CONFIG_FILE).read_text())
    if not getattr(model, "peft_config", None):
        apply_peft(
            model,
            cfg["method"],
            target_modules=cfg.get("target_modules"),
            exclude_modules=cfg.get("exclude_modules"),
            head=cfg.get("head"),
            seed=cfg.get("seed", 0),
            dtype=getattr(torch, cfg.get("dtype", "float32")),
            **cfg.get("options", {}),
        )
    elif model.peft_config["method"] != cfg["method"]:
        raise PeftError(f"adapter in {src} is {cfg['method']!r} but the model has {model.peft_config['method']!r}")
    tensors = load_file(str(src / WEIGHTS_FILE))
    state = model.state_dict()
    for key, t in tensors.items():
        if key not in state:
            raise PeftError(
                f"adapter in {src} does not fit this model: it has no {key!r} (saved from another architecture?)"
            )
        if tuple(state[key].shape) != tuple(t.shape):
            raise PeftError(
                f"adapter in {src} does not fit this model: {key!r} is {tuple(t.shape)} in the file, "
                f"{tuple(state[key].shape)} in the model"
            )
    model.load_state_dict(tensors, strict=False)
    return model
