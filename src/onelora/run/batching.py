"""The global batch, reached by gradient accumulation: `global = micro × world size × accumulation`.

The paper's LLaMA runs fix the global batch (128) and the per-device micro batch; the accumulation
follows from the number of processes (7B: 4 × 16 GPUs × 2; 13B: 2 × 64 × 1; one GPU: 4 × 1 × 32), so
it is computed, never hand-set: `apply_global_batch(cfg)` writes `trainer.accumulate_grad_batches`.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, open_dict


def _config_error(msg: str) -> Exception:
    from ..errors import ConfigError

    return ConfigError(msg)


def accumulation_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that micro × world × steps = global (must divide exactly)."""
    if min(global_batch, micro_batch, world_size) <= 0:
        raise _config_error(
            f"batch sizes and world size must be positive: global {global_batch}, micro {micro_batch}, world {world_size}"
        )
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise _config_error(
            f"task.global_batch_size={global_batch} is not a multiple of micro batch {micro_batch} × {world_size} "
            f"process(es) = {per_step}; change data.module.batch_size= or trainer.devices=/trainer.num_nodes="
        )
    return global_batch // per_step


def world_size(trainer: Any) -> int:
    """Processes a Lightning trainer config will run: devices (int, list, "0,1", "auto", -1) × num_nodes."""
    devices, nodes = trainer.get("devices", 1), int(trainer.get("num_nodes", 1) or 1)
    if isinstance(devices, str):
        devices = devices.strip()
        if devices.lstrip("-").isdigit():
            devices = int(devices)
        elif devices != "auto":
            devices = [d for d in devices.split(",") if d.strip()]
    if isinstance(devices, int) and devices > 0:
        n = devices
    elif not isinstance(devices, (int, str)) and hasattr(devices, "__len__"):  # list, tuple, ListConfig
        n = len(devices)
    else:  # "auto" or -1: every visible accelerator (one process on CPU)
        import torch

        on_cpu = str(trainer.get("accelerator", "auto")) == "cpu" or not torch.cuda.is_available()
        n = 1 if on_cpu else torch.cuda.device_count()
    return max(n, 1) * nodes


def apply_global_batch(cfg: DictConfig) -> int | None:
    """Set `trainer.accumulate_grad_batches` from `task.global_batch_size` (None: the task fixes none).

    A hand-set accumulation other than 1 that disagrees with the computed one is an error (set one of them).
    """
    global_batch = cfg.task.get("global_batch_size")
    if not global_batch:
        return None
    micro = int(cfg.data.module.batch_size)
    steps = accumulation_steps(int(global_batch), micro, world_size(cfg.trainer))
    current = cfg.trainer.get("accumulate_grad_batches", 1)
    if current not in (None, 1, steps):
        raise _config_error(
            f"trainer.accumulate_grad_batches={current} contradicts task.global_batch_size={global_batch} "
            f"(micro {micro} × {world_size(cfg.trainer)} process(es) needs {steps}); set task.global_batch_size=null "
            "to choose the accumulation by hand"
        )
    with open_dict(cfg):
        cfg.trainer.accumulate_grad_batches = steps
    return steps
