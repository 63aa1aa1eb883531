"""`run(cfg)`, what run.py calls: check the config, then train (`onelora.run.train`) or, with `dry_run=true`,
print what the run would build and what it would cost, without weights or data."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..run.build import build_peft_model, peft_method
from ..run.train import check_config, train


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and validate as `cfg` says; returns the run record (also written to result.json)."""
    check_config(cfg)
    if cfg.dry_run:
        return dry_run(cfg)
    return train(cfg)[0]


def dry_run(cfg: DictConfig) -> dict[str, int]:
    """Build on the meta device, apply the method, print the summary; no weights, no data."""
    model, counts = build_peft_model(cfg, meta=True)
    lines = [
        f"model: {cfg.model.name} ({type(model).__name__}), pretrained: {cfg.model.get('pretrained')}",
        f"peft: {cfg.peft.name}{'' if peft_method(cfg) == cfg.peft.name else f' ({peft_method(cfg)})'}, targets: {cfg.peft.targets}, options: {OmegaConf.to_container(cfg.peft.options)}",
        "trainable by group: " + ", ".join(f"{k}={v:,}" for k, v in sorted(counts.groups.items())),
        f"trainable fraction: {counts.trainable / max(counts.total, 1):.6%}",
    ]
    values = {
        "peft_params": counts.peft,
        "head_params": counts.head,
        "trainable_params": counts.trainable,
        "total_params": counts.total,
        "adapted_layers": counts.adapted_layers,
    }
    # imported here: a run that trains needs neither the estimate nor its imports (pandas for the costs' tables)
    from ..costs.memory import estimate_from_config, format_memory_lines
    from ..run.batching import apply_global_batch

    accumulation = apply_global_batch(cfg)
    if accumulation:
        lines.append(f"global batch {cfg.task.global_batch_size}: accumulate_grad_batches={accumulation}")
    lines += format_memory_lines(estimate_from_config(model, cfg))
    print("\n".join(lines + [f"{k}={v}" for k, v in values.items()]))
    return values
