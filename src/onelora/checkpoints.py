"""Rebuild a finished run's model from its run directory: `config.yaml` + `checkpoints/last.ckpt`.

Checkpoints hold only what trains (see `PeftTask.on_save_checkpoint`); the frozen weights come back from the
run's pretrained source, or from its seed for architecture-only models, exactly as the run built them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class RunError(ValueError):
    """A run directory that cannot be rebuilt (one clear line)."""


def load_run_config(run_dir: Path, config: Path | None = None) -> Any:
    """The run's resolved config (`config.yaml`, else Hydra's `.hydra/config.yaml`), its output dir set to run_dir."""
    from omegaconf import OmegaConf, open_dict

    candidates = [config] if config else [run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"]
    path = next((p for p in candidates if p is not None and p.is_file()), None)
    if path is None:
        raise RunError(f"no run config in {run_dir} (config.yaml or .hydra/config.yaml); pass the config's path")
    cfg = OmegaConf.load(path)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)  # Hydra's ${hydra:...} does not resolve outside a Hydra run
    return cfg


def checkpoint_state(path: Path) -> dict[str, Any]:
    """`model.*` tensors of a Lightning checkpoint file, or of a DeepSpeed checkpoint folder."""
    import torch

    if path.is_dir():  # DeepSpeed: <ckpt>/checkpoint/mp_rank_00_model_states.pt holds the module's state
        files = sorted(path.rglob("mp_rank_00_model_states.pt"))
        if not files:
            raise RunError(f"{path} is a folder without mp_rank_00_model_states.pt")
        raw = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    elif path.is_file():  # our own checkpoint: it also holds RNG state and loop progress (not only tensors)
        raw = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    else:
        raise RunError(f"no checkpoint at {path}")
    state = {}
    for k, v in raw.items():
        i = k.find("model.")
        if i >= 0:
            state[k[i:]] = v
    return state


def load_run(run_dir: Path, ckpt: Path | None = None, config: Path | None = None) -> tuple[Any, Any, Any]:
    """(cfg, model, task): the run's model (same seed, method and dtypes) with the checkpoint's trained tensors."""
    import lightning as L
    from hydra.utils import instantiate

    from .train import build_peft_model

    cfg = load_run_config(run_dir, config)
    ckpt = ckpt or run_dir / "checkpoints" / "last.ckpt"
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # random-init models: the same frozen weights
    model, _ = build_peft_model(cfg)
    task = instantiate(cfg.task.module, model=model, optimizer=None, scheduler=None)
    missing, unexpected = task.load_state_dict(checkpoint_state(ckpt), strict=False)
    trainable = {f"model.{n}" for n, p in model.named_parameters() if p.requires_grad}
    absent = sorted(trainable & set(missing))
    if absent or unexpected:
        raise RunError(
            f"checkpoint {ckpt} does not match the run's model: missing {absent[:3]}, unexpected {list(unexpected)[:3]}"
        )
    return cfg, model, task
