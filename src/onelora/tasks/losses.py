"""Training losses.

Scale-invariant log (SILog) loss for metric depth, in the two forms of the Depth Anything code bases:

* ``variant="zoedepth"`` (Depth Anything V1 ``metric_depth`` = ZoeDepth ``SILogLoss``, beta = 0.15)::

      g = ln(p + 1e-7) - ln(t + 1e-7)            over the masked pixels
      L = 10 * sqrt(Var(g) + 0.15 * mean(g)**2)    Var unbiased (torch.var)
        (= 10 * sqrt(mean(g**2) - 0.85 * mean(g)**2) up to the n/(n-1) factor)

* ``variant="v2"`` (Depth Anything V2 ``metric_depth`` ``SiLogLoss``, lambda = 0.5)::

      d = ln t - ln p                              over the masked pixels
      L = sqrt(mean(d**2) - 0.5 * mean(d)**2)

Both pool all masked pixels of the batch into one set (as the references do), and both compute in float32
with autocast disabled (ZoeDepth notes that AMP produces NaNs here).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["silog_loss"]


def _as_b1hw(x: Tensor, name: str) -> Tensor:
    """View ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` as ``(B, 1, H, W)``."""
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x.unsqueeze(1)
    if x.ndim == 4 and x.shape[1] == 1:
        return x
    raise ValueError(f"{name} must have shape (H, W), (B, H, W) or (B, 1, H, W); got {tuple(x.shape)}")


def silog_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    variant: Literal["zoedepth", "v2"] = "zoedepth",
) -> Tensor:
    """Scale-invariant log loss between predicted and ground-truth depth (see the module docstring).

    Args:
        pred: predicted depth, ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``; upsampled bilinearly
            (``align_corners=True``) to the target size first when the spatial sizes differ.
        target: ground-truth depth of the same batch, any of the same layouts.
        mask: boolean, target's shape; ``True`` = pixel enters the loss (``None``: all pixels).
        variant: ``"zoedepth"`` (Depth Anything V1 / ZoeDepth) or ``"v2"`` (Depth Anything V2).

    Returns:
        A scalar float32 tensor.

    Raises:
        ValueError: on incompatible shapes, an unknown variant, or an empty mask.
    """
    if variant not in ("zoedepth", "v2"):
        raise ValueError(f"unknown SILog variant {variant!r}; expected 'zoedepth' or 'v2'")
    p = _as_b1hw(pred, "pred")
    t = _as_b1hw(target, "target")
    if p.shape[0] != t.shape[0]:
        raise ValueError(f"batch size mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
    if p.shape[-2:] != t.shape[-2:]:
        p = F.interpolate(p, size=t.shape[-2:], mode="bilinear", align_corners=True)
    if mask is not None:
        m = _as_b1hw(mask, "mask")
        if m.shape != t.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match target shape {tuple(target.shape)}")
        m = m.bool()
        p, t = p[m], t[m]
    else:
        p, t = p.flatten(), t.flatten()
    if p.numel() == 0:
        raise ValueError("silog_loss: the mask selects no pixel")
    with torch.autocast(device_type=p.device.type, enabled=False):
        p, t = p.float(), t.float()
        if variant == "zoedepth":
            g = torch.log(p + 1e-7) - torch.log(t + 1e-7)
            return 10.0 * torch.sqrt(torch.var(g) + 0.15 * torch.mean(g) ** 2)
        d = torch.log(t) - torch.log(p)
        return torch.sqrt(torch.mean(d**2) - 0.5 * torch.mean(d) ** 2)
