"""The model a run trains: the model config's model with the peft config's method on it.

Below both the run (`train`) and what rebuilds a finished run (`checkpoints.load_run`), the costs and the scripts.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..models import build_model
from ..peft import DEFAULT_HEADS, ParameterCount, apply_peft, count_parameters, load_peft


def peft_method(cfg: DictConfig) -> str:
    """The registry method applied: `peft.method` where a task sets its own (DiffFit without β on MDE and LLaMA-2),
    else the config's name. Records, run folders and reports keep `peft.name`."""
    return cfg.peft.get("method") or cfg.peft.name


def peft_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """apply_peft's arguments from the model and peft config groups."""
    targets = cfg.model.targets.get(cfg.peft.targets)
    if targets is None:
        raise ConfigError(
            f"model {cfg.model.name} names no target modules for role {cfg.peft.targets!r} "
            f"(peft {cfg.peft.name}); its roles: {', '.join(cfg.model.targets)}"
        )
    heads = list(cfg.model.get("head") or [])
    # the task decides whether its head trains; a dry run of a model outside the task uses the model's default
    fits = cfg.model.get("kind") in (cfg.task.get("model_kinds") or [cfg.model.get("kind")])
    train_head = cfg.task.get("train_head", False) if fits else cfg.model.get("train_head", False)
    return {
        "target_modules": targets if isinstance(targets, str) else list(targets),
        "exclude_modules": list(dict.fromkeys(DEFAULT_HEADS + heads)),
        "head": heads if train_head else None,
        "seed": cfg.seed,
        **OmegaConf.to_container(cfg.peft.options, resolve=True),
    }


def build_peft_model(cfg: DictConfig, meta: bool = False) -> tuple[torch.nn.Module, ParameterCount]:
    model = build_model(cfg.model, pretrained=not meta, meta=meta)
    apply_peft(model, peft_method(cfg), **peft_kwargs(cfg))
    if cfg.get("init_adapter"):  # save_peft's or HF peft's folder, loaded strictly (checked by the dry run too)
        load_peft(model, cfg.init_adapter)
    return model, count_parameters(model)
