"""Monocular depth estimation (the paper's Depth Anything transfers): SILog loss, ZoeDepth evaluation, RMSE.

Training: ``predicted_depth = model(pixel_values=images).predicted_depth`` (B, h, w) at the input size, upsampled
bilinearly (``align_corners=True``) to the ground truth's own resolution and masked there, then SILog
(:func:`onelora.tasks.losses.silog_loss`, ZoeDepth form by default), as ZoeDepth's trainer does: every LiDAR point
of a KITTI frame enters the loss. Validation: one forward pass (ZoeDepth's trainer; ``flip_eval`` averages with the
flipped image), then :class:`onelora.metrics.depth.DepthMetrics` (prediction upsampled to the ground truth, clamped
to the evaluation range, Eigen/Garg crop, errors averaged over every image with at least one valid pixel, as
ZoeDepth; images without one are counted in ``num_skipped``). ``final_flip_eval``: one flip-averaged pass after
training (ZoeDepth's evaluate.py), kept apart as ``eval_flip``.
The run's metric is RMSE (lower is better); AbsRel, δ1..δ3, log10, RMSE-log, SqRel and SILog are logged too.

Optimiser extras over :class:`PeftTask` (both from ZoeDepth, the paper's "training settings of Depth Anything"):
``lr_groups`` scales the learning rate of parameter groups by module prefix (ZoeDepth trains the pre-trained
encoder and DPT decoder at lr/50 when it fine-tunes the whole model), and the ``onecycle`` schedule
(``torch.optim.lr_scheduler.OneCycleLR``; other names go to ``transformers.get_scheduler`` as in the base).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.depth import warn_max_depth_mismatch
from ..metrics.depth import DepthMetrics, flip_average
from .base import PeftTask
from .losses import silog_loss

__all__ = ["DepthTask", "Float32Conv2d", "fp32_output_conv"]


class Float32Conv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that computes in float32 even under autocast (same parameters, same state-dict names)."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.float()
            return F.conv2d(x.float(), self.weight.float(), bias, self.stride, self.padding, self.dilation, self.groups)


def fp32_output_conv(conv: nn.Conv2d) -> None:
    """Make `conv` compute in float32 under autocast, in place (its class becomes :class:`Float32Conv2d`).

    Depth Anything's metric head ends in ``sigmoid(conv3(x)) * max_depth``; in bf16 that depth is rounded by up to
    ~0.4 % (tenths of a metre at KITTI's range), enough to move RMSE and AbsRel. The last 1x1 convolution costs
    nothing in float32, and the sigmoid and the scaling then stay in float32 too.
    """
    if type(conv) is nn.Conv2d:
        conv.__class__ = Float32Conv2d


class DepthTask(PeftTask):
    """Metric depth with a `transformers` depth estimator (``DepthAnythingForDepthEstimation``).

    Args:
        model: returns an object with ``predicted_depth`` (B, H, W) from ``model(pixel_values=...)``.
        loss: SILog variant, ``"zoedepth"`` (default) or ``"v2"``.
        min_depth, max_depth: the evaluation range of the data set (also checked against the model's max_depth).
        eval_crop: ``"eigen"`` (NYU), ``"garg"`` (KITTI, DIODE outdoor), ``"kitti_eigen"`` or ``None``.
        flip_eval: average the prediction with that of the flipped image at validation (off in the paper's
            experiments: ZoeDepth's trainer validates with one forward pass; only its evaluate.py flips).
        final_flip_eval: after training, one more validation pass with flip averaging (evaluate.py's protocol),
            recorded as ``eval_flip`` apart from the training's validations.
        min_valid_pixels: images with fewer valid ground-truth pixels are skipped at validation (counted in
            ``num_skipped``); 1 = ZoeDepth / Depth Anything V1 (V2 uses 10). A training batch with fewer than 2 valid
            pixels (SILog's unbiased variance needs 2) gives a zero loss.
        fp32_output: run the head's last convolution in float32 under mixed precision (:func:`fp32_output_conv`).
        lr_groups: ``{module prefix: lr factor}`` for trainable parameters under that prefix (longest prefix wins;
            others keep the optimiser's lr), e.g. ``{"backbone": 0.02, "neck": 0.02}``.
        data_name: the data set's name, for messages.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Literal["zoedepth", "v2"] = "zoedepth",
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        eval_crop: str | None = None,
        flip_eval: bool = False,
        final_flip_eval: bool = False,
        min_valid_pixels: int = 1,
        fp32_output: bool = True,
        lr_groups: Mapping[str, float] | None = None,
        data_name: str = "data",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("metric_name", "rmse")
        kwargs.setdefault("metric_direction", "min")
        super().__init__(model, lr_groups=lr_groups, **kwargs)
        if loss not in ("zoedepth", "v2"):
            raise ValueError(f"unknown SILog variant {loss!r}; task.loss must be zoedepth or v2")
        self.loss_variant = loss
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.flip_eval, self.final_flip_eval = flip_eval, final_flip_eval
        self.min_valid_pixels = int(min_valid_pixels)
        self.data_name = data_name
        self.depth_metrics = DepthMetrics(min_depth, max_depth, crop=eval_crop, min_valid_pixels=min_valid_pixels)
        conv3 = getattr(getattr(model, "head", None), "conv3", None)
        if fp32_output and isinstance(conv3, nn.Conv2d):
            fp32_output_conv(conv3)

    # --- the model ------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Predicted metric depth (B, H, W) at the input resolution."""
        return self.model(pixel_values=images).predicted_depth

    def on_fit_start(self) -> None:
        config = getattr(self.model, "config", None)
        warn_max_depth_mismatch(getattr(config, "max_depth", None), self.max_depth, self.data_name)

    # --- PeftTask ---------------------------------------------------------------------------
    @property
    def final_eval(self) -> str | None:
        return "eval_flip" if self.final_flip_eval else None

    def start_final_eval(self) -> None:
        super().start_final_eval()
        self.flip_eval = True

    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        pred = self(batch["image"])
        mask = batch["mask"]
        if int(mask.sum()) < 2:
            return pred.sum() * 0.0  # nothing to learn from this batch (keeps the graph for DDP)
        # the prediction is upsampled to the ground truth's resolution inside the loss (ZoeDepth's SILogLoss)
        return silog_loss(pred, batch["depth"], mask, variant=self.loss_variant)

    def validation_update(self, batch: dict[str, Any]) -> None:
        images = batch["image"]
        pred = flip_average(self, images) if self.flip_eval else self(images)
        pred, depth = self.kept(pred.float()), self.kept(batch["depth"])  # each image once under DDP
        if len(pred):
            self.depth_metrics.update(pred, depth)
        return None

    def compute_metrics(self) -> dict[str, float]:
        values = {k: float(v) for k, v in self.depth_metrics.compute().items()}
        with self.depth_metrics.sync_context():  # the counts over all processes, as compute() sums them
            values["num_images"] = float(self.depth_metrics.num_images)
            values["num_skipped"] = float(self.depth_metrics.num_skipped)
        self.depth_metrics.reset()
        return values

    # --- optimiser: per-prefix learning rates and ZoeDepth's one-cycle schedule ---------------
