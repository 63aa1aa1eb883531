"""Rebuild a finished run's model from its run directory: `config.yaml` + `checkpoints/last.ckpt`.

Checkpoints hold only what trains (see `PeftTask.on_save_checkpoint`); the frozen weights come back from the
run's pretrained source, or from its seed for architecture-only models, exactly as the run built them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import UserError

log = logging.getLogger("onelora")


class RunError(UserError):
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
        try:
            raw = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        except Exception as e:  # truncated, not a checkpoint: name the file
            raise RunError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None
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

    from .build import build_peft_model

    cfg = load_run_config(run_dir, config)
    # the newest checkpoint that loads (last.ckpt's target, unless that link dangles or its file is damaged)
    ckpt = ckpt or resume_checkpoint(run_dir / "checkpoints", set_aside=False) or run_dir / "checkpoints" / "last.ckpt"
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # random-init models: the same frozen weights
    model, _ = build_peft_model(cfg)
    task = instantiate(cfg.task.module, model=model, optimizer=None, scheduler=None)
    state = checkpoint_state(ckpt)
    check_trained_keys(ckpt, state, trained_keys(task), set(task.state_dict()))
    task.load_state_dict(state, strict=False)
    return cfg, model, task


def trained_keys(task: Any) -> set[str]:
    """The state-dict keys of what the task's model trains (what a checkpoint must hold)."""
    return {f"model.{n}" for n, p in task.model.named_parameters() if p.requires_grad}


# --- resuming a run: the newest checkpoint that loads and fits the model -------------------------------------
def check_trained_keys(ckpt: Path, keys: Any, trainable: set[str], known: set[str] | None = None) -> None:
    """A checkpoint must hold every tensor the model trains (and, given `known`, nothing the model lacks).

    A missing tensor would silently stay at its initial value (a model config's targets changed between a
    preemption and its requeue, a checkpoint of another run); one line names the keys instead.
    """
    keys = set(keys)
    missing = sorted(trainable - keys)
    unexpected = sorted(keys - known) if known is not None else []
    if missing or unexpected:

        def some(names: list[str]) -> str:
            return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")

        parts = ([f"lacks {len(missing)} trained tensor(s) of the model: {some(missing)}"] if missing else []) + (
            [f"holds {len(unexpected)} tensor(s) the model does not have: {some(unexpected)}"] if unexpected else []
        )
        raise RunError(
            f"checkpoint {ckpt} does not match the run's model: {'; '.join(parts)}; the model or method config "
            "changed since it was saved (rerun=true starts afresh and keeps the old checkpoints aside)"
        )


def _peek(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint's contents without reading its tensors (memory-mapped): fails on a damaged file."""
    import torch

    return torch.load(path, map_location="cpu", mmap=True, weights_only=False)


def resume_checkpoint(
    ckpt_dir: Path, trainable: set[str] | None = None, known: set[str] | None = None, set_aside: bool = True
) -> Path | None:
    """The checkpoint to resume from: the newest in `ckpt_dir` (by training step) that loads, else None.

    `last.ckpt` is where Lightning points, but not the only candidate: a kill between deleting the previous
    checkpoint and re-linking `last.ckpt` leaves the link dangling next to a newer file, and a truncated file
    (disk full, a copy cut short) does not load. Unreadable files are set aside as `<name>.unreadable` and named
    in one line (by one process: `set_aside`). A DeepSpeed checkpoint (a folder) is taken as it is. The chosen checkpoint must hold every
    tensor in `trainable` (`check_trained_keys`).
    """
    last = ckpt_dir / "last.ckpt"
    if last.is_dir():
        return last
    if not ckpt_dir.is_dir():
        return None
    files = sorted((p for p in ckpt_dir.glob("*.ckpt") if p.is_file() and not p.is_symlink()), key=_mtime)
    link = last.resolve() if last.is_symlink() else None
    loadable: list[tuple[int, float, Path, dict[str, Any]]] = []
    bad: list[str] = []
    for path in files:
        try:
            ckpt = _peek(path)
            step = int(ckpt["global_step"])
        except Exception as e:  # any damage: truncated zip, bad pickle, missing key
            bad.append(f"{path} ({type(e).__name__}: {e})")
            if set_aside:
                path.rename(path.with_name(path.name + ".unreadable"))
            continue
        loadable.append((step, _mtime(path), path, ckpt))
    if not loadable:
        if bad:
            log.warning("no checkpoint in %s loads (%s): starting afresh", ckpt_dir, "; ".join(bad))
        return None
    step, _, path, ckpt = max(loadable, key=lambda t: (t[0], t[1], t[2] == last))
    if bad or (link is not None and link != path.resolve()):
        gone = link is not None and not link.exists()
        why = (
            f"unreadable, set aside as *.unreadable: {'; '.join(bad)}"
            if bad
            else f"last.ckpt points to {link.name}{', which is gone' if gone else ', an older one'}"
        )
        log.warning("resuming from %s (step %d), the newest checkpoint that loads; %s", path, step, why)
    if trainable is not None:
        check_trained_keys(path, ckpt["state_dict"], trainable, known)
    return path


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def set_aside_checkpoints(ckpt_dir: Path) -> Path | None:
    """`rerun=true`: move the checkpoint folder to `<folder>.<time>` (kept, not deleted), whatever it holds."""
    import datetime as dt

    if not ckpt_dir.exists() and not ckpt_dir.is_symlink():
        return None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    target = ckpt_dir.with_name(f"{ckpt_dir.name}.{stamp}")
    n = 1
    while target.exists():
        target, n = ckpt_dir.with_name(f"{ckpt_dir.name}.{stamp}.{n}"), n + 1
    ckpt_dir.rename(target)
    log.info("rerun=true: the previous checkpoints are kept in %s", target)
    return target
