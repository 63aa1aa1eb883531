"""Monocular depth estimation metrics: the ZoeDepth / Depth Anything V1 ``metric_depth`` evaluation protocol.

Protocol (``evaluate.py`` and ``utils/misc.py compute_metrics/compute_errors`` of LiheYoung/Depth-Anything):

1. prediction = mean of the output and the h-flipped output of the h-flipped input (:func:`flip_average`);
2. the prediction is upsampled bilinearly (``align_corners=True``) to the ground-truth size, clamped to
   ``[min_depth, max_depth]``, NaN -> ``min_depth`` and +-inf -> ``max``/``min`` (:func:`prepare_prediction`);
3. valid pixels: ``min_depth < gt < max_depth`` intersected with a crop (Eigen for NYU, Garg for KITTI and
   DIODE outdoor) (:func:`evaluation_mask`);
4. the errors of :func:`compute_depth_errors` are computed per image and averaged over every image with at least one
   valid pixel (:class:`DepthMetrics`).

With ``V`` the valid pixels of one image, ``n = |V|``, ``g`` the ground truth and ``p`` the prediction::

    t        = max(g/p, p/g);  d_k = #{t < 1.25**k} / n               (k = 1, 2, 3)
    abs_rel  = mean(|g - p| / g)          sq_rel   = mean((g - p)**2 / g)
    rmse     = sqrt(mean((g - p)**2))     rmse_log = sqrt(mean((ln g - ln p)**2))
    log10    = mean(|log10 g - log10 p|)
    silog    = 100 * sqrt(mean(e**2) - mean(e)**2),   e = ln p - ln g   (lambda = 1, x100)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "DEPTH_METRIC_KEYS",
    "CROPS",
    "compute_depth_errors",
    "eigen_crop_mask",
    "garg_crop_mask",
    "kitti_eigen_crop_mask",
    "crop_mask",
    "evaluation_mask",
    "prepare_prediction",
    "flip_average",
    "DepthMetrics",
]

#: Keys returned by :func:`compute_depth_errors` and :meth:`DepthMetrics.compute`, in this order.
DEPTH_METRIC_KEYS: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "d1", "d2", "d3")

#: Crop names accepted by :func:`crop_mask` / :func:`evaluation_mask` (``None`` or ``"none"``: no crop).
CROPS: tuple[str, ...] = ("eigen", "garg", "kitti_eigen")


# --------------------------------------------------------------------------------------------------------------
# per-image errors
# --------------------------------------------------------------------------------------------------------------


def _as_bhw(x: Tensor, name: str) -> Tensor:
    """View ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` as ``(B, H, W)``."""
    if x.ndim == 2:
        return x.unsqueeze(0)
    if x.ndim == 3:
        return x
    if x.ndim == 4 and x.shape[1] == 1:
        return x.squeeze(1)
    raise ValueError(f"{name} must have shape (H, W), (B, H, W) or (B, 1, H, W); got {tuple(x.shape)}")


def _batched_errors(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Per-image errors of ``(B, H, W)`` inputs (float64); returns ``({key: (B,)}, n_valid (B,))``.

    Masked-out pixels never enter a sum (they may hold 0, NaN or inf). Images with ``n = 0`` give NaN.
    """
    pred = pred.double()
    target = target.double()
    mask = mask.bool()
    one = torch.ones((), dtype=torch.float64, device=pred.device)
    p = torch.where(mask, pred, one)
    g = torch.where(mask, target, one)
    n = mask.sum(dim=(-2, -1))
    n_f = n.double()

    def mean(x: Tensor) -> Tensor:
        return torch.where(mask, x, 0.0).sum(dim=(-2, -1)) / n_f

    thresh = torch.maximum(g / p, p / g)
    diff = g - p
    log_diff = torch.log(g) - torch.log(p)  # ln g - ln p
    e = -log_diff  # ln p - ln g
    silog_var = (mean(e**2) - mean(e) ** 2).clamp_min(0.0)  # clamp: float round-off for a constant e
    errors = {
        "abs_rel": mean(diff.abs() / g),
        "sq_rel": mean(diff**2 / g),
        "rmse": mean(diff**2).sqrt(),
        "rmse_log": mean(log_diff**2).sqrt(),
        "log10": mean((torch.log10(g) - torch.log10(p)).abs()),
        "silog": 100.0 * silog_var.sqrt(),
        "d1": mean((thresh < 1.25).double()),
        "d2": mean((thresh < 1.25**2).double()),
        "d3": mean((thresh < 1.25**3).double()),
    }
    return errors, n


def compute_depth_errors(pred: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
    """Depth errors of ONE image over the masked-in pixels (ZoeDepth / Depth Anything V1 ``compute_errors``).

    Args:
        pred: predicted depth ``(H, W)``, already at ground-truth size (see :func:`prepare_prediction`).
        target: ground-truth depth ``(H, W)``.
        mask: boolean ``(H, W)``; ``True`` = pixel is evaluated (see :func:`evaluation_mask`).

    Returns:
        ``{abs_rel, sq_rel, rmse, rmse_log, log10, silog, d1, d2, d3}`` as Python floats (module docstring formulas).

    Raises:
        ValueError: on a shape mismatch, a non-boolean mask, an empty mask, or a non-positive / non-finite
            prediction or ground truth inside the mask (the logs would be undefined).
    """
    if pred.ndim != 2 or pred.shape != target.shape or mask.shape != target.shape:
        raise ValueError(
            "compute_depth_errors expects pred, target and mask of the same shape (H, W); got "
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)}, mask {tuple(mask.shape)}. "
            "Upsample the prediction with prepare_prediction() first."
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a boolean tensor, got dtype {mask.dtype}")
    if not bool(mask.any()):
        raise ValueError("compute_depth_errors: the mask selects no pixel (no valid ground truth inside the crop)")
    p, g = pred[mask], target[mask]
    if not bool(((p > 0) & torch.isfinite(p)).all()):
        raise ValueError("compute_depth_errors: the prediction must be positive and finite on the masked pixels")
    if not bool(((g > 0) & torch.isfinite(g)).all()):
        raise ValueError("compute_depth_errors: the ground truth must be positive and finite on the masked pixels")
    errors, _ = _batched_errors(pred[None], target[None], mask[None])
    return {k: float(errors[k][0]) for k in DEPTH_METRIC_KEYS}


# --------------------------------------------------------------------------------------------------------------
# crops and masks
# --------------------------------------------------------------------------------------------------------------


def _box_mask(h: int, w: int, r0: int, r1: int, c0: int, c1: int, device: torch.device | str | None) -> Tensor:
    m = torch.zeros(h, w, dtype=torch.bool, device=device)
    m[r0:r1, c0:c1] = True
    return m


def eigen_crop_mask(h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """NYU Eigen crop: rows ``45:471``, cols ``41:601`` of a 480x640 image, as a boolean ``(h, w)`` mask.

    Other sizes: the box is scaled with integer arithmetic, rows ``[45h//480, 471h//480)`` and cols
    ``[41w//640, 601w//640)``, which is exact at 480x640. (The reference code applies the fixed pixel indices
    ``45:471, 41:601`` to any size; the two agree only at 480x640, the only size the paper evaluates with this crop.)
    """
    return _box_mask(h, w, 45 * h // 480, 471 * h // 480, 41 * w // 640, 601 * w // 640, device)


def garg_crop_mask(h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """Garg crop (KITTI, DIODE outdoor): rows ``[int(0.40810811h), int(0.99189189h))``,
    cols ``[int(0.03594771w), int(0.96405229w))``, int-truncated as in the reference code."""
    return _box_mask(h, w, int(0.40810811 * h), int(0.99189189 * h), int(0.03594771 * w), int(0.96405229 * w), device)


def kitti_eigen_crop_mask(h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """KITTI Eigen crop: rows ``[int(0.3324324h), int(0.91351351h))``, cols ``[int(0.0359477w), int(0.96405229w))``."""
    return _box_mask(h, w, int(0.3324324 * h), int(0.91351351 * h), int(0.0359477 * w), int(0.96405229 * w), device)


_CROP_FNS: dict[str, Callable[[int, int, torch.device | str | None], Tensor]] = {
    "eigen": eigen_crop_mask,
    "garg": garg_crop_mask,
    "kitti_eigen": kitti_eigen_crop_mask,
}


def crop_mask(crop: str | None, h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``(h, w)`` mask of ``crop`` (``'eigen' | 'garg' | 'kitti_eigen'``; ``None``/``'none'``: all True)."""
    if crop is None or crop == "none":
        return torch.ones(h, w, dtype=torch.bool, device=device)
    if crop not in _CROP_FNS:
        raise ValueError(f"unknown crop {crop!r}; expected one of {CROPS} or None")
    return _CROP_FNS[crop](h, w, device)


def evaluation_mask(target: Tensor, min_depth: float, max_depth: float, crop: str | None = None) -> Tensor:
    """Pixels that are evaluated: ``(min_depth < target < max_depth) & crop``.

    ``target`` may be ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``; the mask has the same shape (bool).
    NaN ground truth is invalid (the comparisons are False).
    """
    valid = (target > min_depth) & (target < max_depth)
    if crop is None or crop == "none":
        return valid
    h, w = target.shape[-2:]
    return valid & crop_mask(crop, h, w, device=target.device)


# --------------------------------------------------------------------------------------------------------------
# prediction post-processing
# --------------------------------------------------------------------------------------------------------------


def prepare_prediction(pred: Tensor, target_hw: tuple[int, int], min_depth: float, max_depth: float) -> Tensor:
    """Bring a prediction to the ground-truth grid and range, as ZoeDepth's ``compute_metrics``.

    Bilinear upsampling (``align_corners=True``) to ``target_hw`` when the size differs, then NaN -> ``min_depth``,
    +inf -> ``max_depth``, -inf -> ``min_depth``, and a clamp to ``[min_depth, max_depth]``.
    ``pred`` may be ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``; the result keeps that rank.
    """
    ndim = pred.ndim
    x = _as_bhw(pred, "pred").unsqueeze(1)  # (B, 1, H, W)
    if not x.is_floating_point():
        x = x.float()
    if tuple(x.shape[-2:]) != tuple(target_hw):
        x = F.interpolate(x, size=tuple(target_hw), mode="bilinear", align_corners=True)
    x = torch.nan_to_num(x, nan=min_depth, posinf=max_depth, neginf=min_depth).clamp(min_depth, max_depth)
    if ndim == 2:
        return x[0, 0]
    if ndim == 3:
        return x[:, 0]
    return x


def flip_average(model_fn: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    """Test-time flip averaging (ZoeDepth ``infer``): ``0.5 * (f(x) + hflip(f(hflip(x))))``.

    ``images`` is ``(B, C, H, W)``; ``model_fn`` returns depth whose last dimension is the image width
    (e.g. ``(B, H', W')`` or ``(B, 1, H', W')``); the flip is along the last dimension of both.
    """
    out = model_fn(images)
    out_flipped = model_fn(torch.flip(images, dims=[-1]))
    return 0.5 * (out + torch.flip(out_flipped, dims=[-1]))


# --------------------------------------------------------------------------------------------------------------
# torchmetrics accumulator
# --------------------------------------------------------------------------------------------------------------


class DepthMetrics(Metric):
    """Per-image depth errors averaged over images (ZoeDepth ``RunningAverageDict``), DDP-ready.

    ``update(pred, target, mask=None)`` takes a batch: ``pred`` ``(B, h, w)`` / ``(B, 1, h, w)`` at any
    resolution, ``target`` ``(B, H, W)`` / ``(B, 1, H, W)`` at ground-truth resolution, optional boolean ``mask``
    of the target's shape (intersected with the evaluation mask). Each prediction goes through
    :func:`prepare_prediction`, each image is masked with :func:`evaluation_mask` (``min_depth``, ``max_depth``,
    ``crop``) and its errors (:func:`compute_depth_errors`) are added to per-key sums. Images with fewer than
    ``min_valid_pixels`` evaluated pixels are skipped and counted in ``num_skipped``: the default 1 is ZoeDepth's /
    Depth Anything V1's rule (every image with a valid pixel counts; one without would make its average NaN there);
    Depth Anything V2's validation uses 10.

    ``compute()`` returns ``{key: sum_key / num_images}`` for :data:`DEPTH_METRIC_KEYS` (NaN before any image).
    States are float64 sums with ``dist_reduce_fx="sum"``.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    num_images: Tensor
    num_skipped: Tensor

    def __init__(
        self,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        crop: str | None = None,
        min_valid_pixels: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}")
        if crop is not None and crop != "none" and crop not in CROPS:
            raise ValueError(f"unknown crop {crop!r}; expected one of {CROPS} or None")
        if min_valid_pixels < 1:
            raise ValueError(f"min_valid_pixels must be >= 1, got {min_valid_pixels}")
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.crop = None if crop == "none" else crop
        self.min_valid_pixels = int(min_valid_pixels)
        for key in DEPTH_METRIC_KEYS:
            self.add_state(f"sum_{key}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:  # type: ignore[override]
        """Accumulate the per-image errors of one batch."""
        target_b = _as_bhw(target, "target")
        pred_b = prepare_prediction(_as_bhw(pred, "pred"), tuple(target_b.shape[-2:]), self.min_depth, self.max_depth)
        if pred_b.shape[0] != target_b.shape[0]:
            raise ValueError(f"batch size mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
        m = evaluation_mask(target_b, self.min_depth, self.max_depth, self.crop)
        if mask is not None:
            mask_b = _as_bhw(mask, "mask")
            if mask_b.shape != target_b.shape:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match target shape {tuple(target.shape)}")
            m = m & mask_b.bool()
        errors, n = _batched_errors(pred_b, target_b, m)
        keep = n >= self.min_valid_pixels
        for key in DEPTH_METRIC_KEYS:
            state = getattr(self, f"sum_{key}")
            setattr(self, f"sum_{key}", state + torch.where(keep, errors[key], 0.0).sum())
        self.num_images = self.num_images + keep.sum()
        self.num_skipped = self.num_skipped + (~keep).sum()

    def compute(self) -> dict[str, Tensor]:
        """Per-image means ``{key: tensor}`` (float64 scalars)."""
        count = self.num_images.double()
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=count.device)
        return {
            key: torch.where(count > 0, getattr(self, f"sum_{key}") / count.clamp_min(1.0), nan)
            for key in DEPTH_METRIC_KEYS
        }
