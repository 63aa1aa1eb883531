"""The storage dtypes of a model's parameters: frozen weights in one dtype, what trains in another.

The run applies the policy (`tasks.math`), and the memory estimate counts the bytes it leaves (`costs.memory`).
"""

from __future__ import annotations

import torch
from torch import nn

DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def to_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).removeprefix("torch.").lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}") from None


def apply_dtype_policy(
    model: nn.Module,
    weights_dtype: str | torch.dtype | None = "bfloat16",
    trainable_dtype: str | torch.dtype | None = "float32",
) -> nn.Module:
    """Frozen floating parameters to `weights_dtype`, trainable ones to `trainable_dtype` (None: unchanged); in place.

    Buffers keep their dtype (LLaMA's RoPE frequencies stay fp32).
    """
    frozen, trainable = to_dtype(weights_dtype), to_dtype(trainable_dtype)
    for p in {id(p): p for p in model.parameters()}.values():
        target = trainable if p.requires_grad else frozen
        if target is not None and p.is_floating_point() and p.dtype != target:
            p.data = p.data.to(target)
    return model
