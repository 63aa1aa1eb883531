"""Depth metrics, crops, prediction post-processing and SILog losses against hand-computed values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from onelora.metrics.depth import (
    DEPTH_METRIC_KEYS,
    DepthMetrics,
    compute_depth_errors,
    crop_mask,
    eigen_crop_mask,
    evaluation_mask,
    flip_average,
    garg_crop_mask,
    kitti_eigen_crop_mask,
    prepare_prediction,
)
from onelora.tasks.depth import DepthTask
from onelora.tasks.losses import silog_loss

LN2 = math.log(2.0)
LOG10_2 = math.log10(2.0)


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# compute_depth_errors
# ---------------------------------------------------------------------------------------------------------------


def test_errors_2x2_by_hand() -> None:
    # valid (gt, pred) pairs: (1, 2), (2, 2), (4, 2); the 4th pixel (gt 100, pred 0) is masked out and must not
    # enter any sum (pred 0 would make the logs -inf).
    gt = t([[1.0, 2.0], [4.0, 100.0]])
    pred = t([[2.0, 2.0], [2.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    err = compute_depth_errors(pred, gt, mask)
    assert list(err) == list(DEPTH_METRIC_KEYS)
    # |g-p|/g = 1/1, 0/2, 2/4                        -> (1 + 0 + 0.5)/3
    assert err["abs_rel"] == pytest.approx(1.5 / 3)
    # (g-p)^2/g = 1/1, 0/2, 4/4                      -> 2/3
    assert err["sq_rel"] == pytest.approx(2.0 / 3)
    # (g-p)^2 = 1, 0, 4                              -> sqrt(5/3)
    assert err["rmse"] == pytest.approx(math.sqrt(5.0 / 3))
    # ln g - ln p = -ln2, 0, +ln2                    -> sqrt(2 ln2^2 / 3)
    assert err["rmse_log"] == pytest.approx(LN2 * math.sqrt(2.0 / 3))
    # |log10 g - log10 p| = log10 2, 0, log10 2      -> 2 log10(2) / 3
    assert err["log10"] == pytest.approx(2 * LOG10_2 / 3)
    # e = ln p - ln g = ln2, 0, -ln2: mean 0, mean e^2 = 2 ln2^2/3 -> 100 sqrt(2/3) ln2
    assert err["silog"] == pytest.approx(100 * LN2 * math.sqrt(2.0 / 3))
    # t = max(g/p, p/g) = 2, 1, 2: only t=1 is below 1.25, 1.5625 and 1.953125
    assert err["d1"] == pytest.approx(1 / 3)
    assert err["d2"] == pytest.approx(1 / 3)
    assert err["d3"] == pytest.approx(1 / 3)


def test_errors_3x3_thresholds_and_abs_rel() -> None:
    # gt = 1 everywhere; ratio t = max(p, 1/p) per pixel; the last pixel is masked out.
    gt = torch.ones(3, 3)
    pred = t([[1.0, 1.2, 1 / 1.3], [1.5, 1.6, 1.9], [2.0, 0.5, 123.0]])
    mask = torch.ones(3, 3, dtype=torch.bool)
    mask[2, 2] = False
    err = compute_depth_errors(pred, gt, mask)
    # t = 1, 1.2, 1.3, 1.5, 1.6, 1.9, 2, 2 (8 valid pixels)
    assert err["d1"] == pytest.approx(2 / 8)  # 1, 1.2 < 1.25
    assert err["d2"] == pytest.approx(4 / 8)  # + 1.3, 1.5 < 1.5625
    assert err["d3"] == pytest.approx(6 / 8)  # + 1.6, 1.9 < 1.953125
    # |1 - p| = 0, .2, 1 - 1/1.3, .5, .6, .9, 1, .5
    assert err["abs_rel"] == pytest.approx((0 + 0.2 + (1 - 1 / 1.3) + 0.5 + 0.6 + 0.9 + 1.0 + 0.5) / 8, rel=1e-6)
    # ln p = 0, ln1.2, -ln1.3, ln1.5, ln1.6, ln1.9, ln2, -ln2
    e = [0.0, math.log(1.2), -math.log(1.3), math.log(1.5), math.log(1.6), math.log(1.9), LN2, -LN2]
    mean_e = sum(e) / 8
    mean_e2 = sum(x * x for x in e) / 8
    assert err["silog"] == pytest.approx(100 * math.sqrt(mean_e2 - mean_e**2), rel=1e-6)
    assert err["rmse_log"] == pytest.approx(math.sqrt(mean_e2), rel=1e-6)


def test_silog_metric_nonzero_mean_and_scale_invariance() -> None:
    gt = torch.ones(1, 3)
    pred = t([[1.0, 2.0, 4.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    # e = 0, ln2, 2ln2: mean ln2, mean e^2 = 5 ln2^2 / 3 -> var = 2 ln2^2 / 3
    err = compute_depth_errors(pred, gt, mask)
    assert err["silog"] == pytest.approx(100 * LN2 * math.sqrt(2 / 3))
    assert compute_depth_errors(3.7 * pred, gt, mask)["silog"] == pytest.approx(err["silog"], rel=1e-5)
    # a perfect prediction: every error is 0, every delta is 1
    perfect = compute_depth_errors(gt, gt, mask)
    assert perfect["silog"] == 0.0 and perfect["rmse"] == 0.0 and perfect["d1"] == 1.0


def test_errors_bad_input() -> None:
    g = torch.ones(2, 2)
    m = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="same shape"):
        compute_depth_errors(torch.ones(3, 3), g, m)
    with pytest.raises(ValueError, match="same shape"):
        compute_depth_errors(torch.ones(1, 2, 2), torch.ones(1, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="no pixel"):
        compute_depth_errors(g, g, torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean"):
        compute_depth_errors(g, g, torch.ones(2, 2))
    with pytest.raises(ValueError, match="positive"):
        compute_depth_errors(torch.zeros(2, 2), g, m)


# ---------------------------------------------------------------------------------------------------------------
# crops and masks
# ---------------------------------------------------------------------------------------------------------------


def _box(h: int, w: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


def test_eigen_crop() -> None:
    assert torch.equal(eigen_crop_mask(480, 640), _box(480, 640, 45, 471, 41, 601))
    assert int(eigen_crop_mask(480, 640).sum()) == 426 * 560
    # scaled: rows 45*240//480 = 22 .. 471*240//480 = 235, cols 41*320//640 = 20 .. 601*320//640 = 300
    assert torch.equal(eigen_crop_mask(240, 320), _box(240, 320, 22, 235, 20, 300))


def test_garg_crop() -> None:
    # KITTI KB crop 352 x 1216: rows int(143.65) = 143 .. int(349.15) = 349, cols int(43.71) = 43 .. int(1172.29) = 1172
    assert torch.equal(garg_crop_mask(352, 1216), _box(352, 1216, 143, 349, 43, 1172))
    # 10 x 10: rows int(4.08) = 4 .. int(9.92) = 9, cols int(0.36) = 0 .. int(9.64) = 9
    assert torch.equal(garg_crop_mask(10, 10), _box(10, 10, 4, 9, 0, 9))
    # DIODE 768 x 1024: rows int(313.43) = 313 .. int(761.77) = 761, cols int(36.81) = 36 .. int(987.19) = 987
    assert torch.equal(garg_crop_mask(768, 1024), _box(768, 1024, 313, 761, 36, 987))


def test_kitti_eigen_and_no_crop() -> None:
    # 100 x 100: rows int(33.24) = 33 .. int(91.35) = 91, cols int(3.59) = 3 .. int(96.41) = 96
    assert torch.equal(kitti_eigen_crop_mask(100, 100), _box(100, 100, 33, 91, 3, 96))
    assert bool(crop_mask(None, 4, 5).all()) and bool(crop_mask("none", 4, 5).all())
    with pytest.raises(ValueError, match="unknown crop"):
        crop_mask("bogus", 4, 5)


def test_evaluation_mask() -> None:
    target = t([[0.0, 5.0, 10.0, 20.0], [0.0005, 9.99, 0.001, float("nan")]])
    # strict min < gt < max: 0.001 and 10 are excluded, NaN is excluded
    expected = torch.tensor([[False, True, False, False], [False, True, False, False]])
    assert torch.equal(evaluation_mask(target, 1e-3, 10.0, None), expected)
    # batched (B, 1, H, W) with the Garg crop of a 10 x 10 image
    target = torch.full((2, 1, 10, 10), 3.0)
    m = evaluation_mask(target, 1e-3, 10.0, "garg")
    assert m.shape == (2, 1, 10, 10)
    assert torch.equal(m[1, 0], _box(10, 10, 4, 9, 0, 9))


# ---------------------------------------------------------------------------------------------------------------
# prediction post-processing
# ---------------------------------------------------------------------------------------------------------------


def test_prepare_prediction_upsample_clamp() -> None:
    pred = t([[1.0, 3.0], [5.0, 7.0]])
    # align_corners=True to 3x3: corners kept, edge midpoints and centre are the averages
    #   1 2 3 / 3 4 5 / 5 6 7, then clamped to [1.5, 6.5]
    out = prepare_prediction(pred, (3, 3), 1.5, 6.5)
    assert torch.allclose(out, t([[1.5, 2.0, 3.0], [3.0, 4.0, 5.0], [5.0, 6.0, 6.5]]))
    # NaN -> min, +inf -> max, -inf -> min, keeping the (B, 1, H, W) layout
    bad = torch.tensor([[[[float("nan"), float("inf")], [-float("inf"), 20.0]]]])
    out = prepare_prediction(bad, (2, 2), 0.001, 10.0)
    assert out.shape == (1, 1, 2, 2)
    assert torch.allclose(out[0, 0], t([[0.001, 10.0], [0.001, 10.0]]))
    assert prepare_prediction(torch.ones(2, 4, 4), (8, 8), 0.1, 10).shape == (2, 8, 8)


def test_flip_average() -> None:
    w = 5
    col = torch.arange(w, dtype=torch.float32)

    def model_fn(x: torch.Tensor) -> torch.Tensor:  # not flip-equivariant: adds the column index
        return x[:, 0] + col

    x = torch.rand(2, 3, 4, w)
    # 0.5 * (x0 + c + flip(flip(x0) + c)) = x0 + 0.5 * (c + flip(c)) = x0 + (w - 1) / 2
    assert torch.allclose(flip_average(model_fn, x), x[:, 0] + (w - 1) / 2)


# ---------------------------------------------------------------------------------------------------------------
# DepthMetrics
# ---------------------------------------------------------------------------------------------------------------


def test_depth_metrics_per_image_mean() -> None:
    # image 1: the 2x2 example above (the gt-100 pixel is invalid because 100 > max_depth 10) -> abs_rel 0.5
    gt1 = t([[1.0, 2.0], [4.0, 100.0]])
    pred1 = t([[2.0, 2.0], [2.0, 0.0]])
    # image 2: perfect prediction on 4 pixels -> abs_rel 0, d1 1
    gt2 = t([[1.0, 2.0], [3.0, 4.0]])
    metric = DepthMetrics(min_depth=1e-3, max_depth=10.0, crop=None)
    metric.update(torch.stack([pred1, gt2]), torch.stack([gt1, gt2]))
    out = metric.compute()
    assert set(out) == set(DEPTH_METRIC_KEYS)
    # per-image mean (0.5 + 0)/2 = 0.25; a pixel-pooled mean would give 1.5/7
    assert float(out["abs_rel"]) == pytest.approx(0.25)
    assert float(out["sq_rel"]) == pytest.approx((2 / 3) / 2)
    assert float(out["rmse"]) == pytest.approx(math.sqrt(5 / 3) / 2)
    assert float(out["silog"]) == pytest.approx(100 * LN2 * math.sqrt(2 / 3) / 2)
    assert float(out["d1"]) == pytest.approx((1 / 3 + 1) / 2)
    assert int(metric.num_images) == 2

    # same result when the two images come in separate batches, in (B, 1, H, W) layout
    metric2 = DepthMetrics(min_depth=1e-3, max_depth=10.0)
    metric2.update(pred1[None, None], gt1[None, None])
    metric2.update(gt2[None, None], gt2[None, None])
    for key in DEPTH_METRIC_KEYS:
        assert float(metric2.compute()[key]) == pytest.approx(float(out[key]))


def test_depth_metrics_upsample_mask_skip_and_reset() -> None:
    metric = DepthMetrics(min_depth=0.5, max_depth=10.0)
    # constant 2 at 2x2 upsampled to 4x4 stays 2; gt 4 -> abs_rel 0.5 on the pixels the extra mask keeps
    pred = torch.full((2, 2, 2), 2.0)
    gt = torch.full((2, 4, 4), 4.0)
    gt[1] = 0.0  # image 2 has no valid pixel: skipped, counted
    extra = torch.ones(2, 4, 4, dtype=torch.bool)
    extra[0, :2] = False
    metric.update(pred, gt, extra)
    out = metric.compute()
    assert float(out["abs_rel"]) == pytest.approx(0.5)
    assert int(metric.num_images) == 1 and int(metric.num_skipped) == 1
    metric.reset()
    assert int(metric.num_images) == 0
    with pytest.raises(ValueError, match="unknown crop"):
        DepthMetrics(crop="bogus")


def test_depth_metrics_clamps_prediction() -> None:
    # prediction 0 (log undefined) and 50 are clamped to [1, 10] before the errors: errors of (2, 1), (2, 10)
    metric = DepthMetrics(min_depth=1.0, max_depth=10.0)
    metric.update(t([[0.0, 50.0]])[None], t([[2.0, 2.0]])[None])
    # abs_rel = (|2-1|/2 + |2-10|/2)/2 = (0.5 + 4)/2
    assert float(metric.compute()["abs_rel"]) == pytest.approx(2.25)


# ---------------------------------------------------------------------------------------------------------------
# SILog losses
# ---------------------------------------------------------------------------------------------------------------


def test_silog_zoedepth_by_hand() -> None:
    pred = t([[1.0, 2.0, 4.0]])
    target = torch.ones(1, 3)
    # g = ln p - ln 1 = 0, ln2, 2ln2 (the 1e-7 offsets change this by < 1e-6):
    # mean ln2, unbiased var (ln2^2 + 0 + ln2^2)/2 = ln2^2 -> L = 10 sqrt(ln2^2 + 0.15 ln2^2) = 10 ln2 sqrt(1.15)
    loss = silog_loss(pred, target, torch.ones(1, 3, dtype=torch.bool), variant="zoedepth")
    assert float(loss) == pytest.approx(10 * LN2 * math.sqrt(1.15), rel=1e-5)


def test_silog_v2_by_hand() -> None:
    pred = t([[1.0, 2.0, 4.0]])
    target = torch.ones(1, 3)
    # d = ln t - ln p = 0, -ln2, -2ln2: mean(d^2) = 5 ln2^2/3, mean(d)^2 = ln2^2 -> L = ln2 sqrt(5/3 - 0.5)
    loss = silog_loss(pred, target, torch.ones(1, 3, dtype=torch.bool), variant="v2")
    assert float(loss) == pytest.approx(LN2 * math.sqrt(5 / 3 - 0.5), rel=1e-6)
    assert float(silog_loss(pred, target, None, variant="v2")) == pytest.approx(float(loss))


def test_silog_upsample_and_mask() -> None:
    # (B, 1, 2, 2) constant 2 upsampled to 4x4 stays 2; target 1 on the valid pixels, 0 (invalid) elsewhere
    pred = torch.full((2, 1, 2, 2), 2.0)
    target = torch.ones(2, 4, 4)
    target[:, 0] = 0.0
    mask = target > 0
    # g = ln 2 on every valid pixel: var 0 -> zoedepth 10 sqrt(0.15) ln2; v2: d = -ln2 -> sqrt(1 - 0.5) ln2
    assert float(silog_loss(pred, target, mask, "zoedepth")) == pytest.approx(10 * math.sqrt(0.15) * LN2, rel=1e-5)
    assert float(silog_loss(pred, target, mask, "v2")) == pytest.approx(math.sqrt(0.5) * LN2, rel=1e-6)


def test_silog_gradient_and_errors() -> None:
    pred = torch.tensor([[1.0, 2.0], [3.0, 5.0]], requires_grad=True)
    target = t([[1.5, 1.0], [4.0, 4.0]])
    for variant in ("zoedepth", "v2"):
        (grad,) = torch.autograd.grad(silog_loss(pred, target, target > 0, variant), pred)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no pixel"):
        silog_loss(pred, target, torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="variant"):
        silog_loss(pred, target, None, variant="bogus")  # type: ignore[arg-type]


def _reference_compute_metrics(gt, pred, min_d, max_d, crop):  # type: ignore[no-untyped-def]
    """numpy transcription of ZoeDepth ``compute_metrics`` + ``compute_errors`` (pred already at GT size)."""
    import numpy as np

    pred = pred.copy()
    pred[pred < min_d] = min_d
    pred[pred > max_d] = max_d
    pred[np.isinf(pred)] = max_d
    pred[np.isnan(pred)] = min_d
    valid = np.logical_and(gt > min_d, gt < max_d)
    h, w = gt.shape
    eval_mask = np.zeros(valid.shape)
    if crop == "garg":
        eval_mask[int(0.40810811 * h) : int(0.99189189 * h), int(0.03594771 * w) : int(0.96405229 * w)] = 1
    else:
        eval_mask[45:471, 41:601] = 1
    valid = np.logical_and(valid, eval_mask)
    g, p = gt[valid], pred[valid]
    thresh = np.maximum(g / p, p / g)
    err = np.log(p) - np.log(g)
    return {
        "d1": (thresh < 1.25).mean(),
        "d2": (thresh < 1.25**2).mean(),
        "d3": (thresh < 1.25**3).mean(),
        "abs_rel": np.mean(np.abs(g - p) / g),
        "sq_rel": np.mean(((g - p) ** 2) / g),
        "rmse": np.sqrt(((g - p) ** 2).mean()),
        "rmse_log": np.sqrt(((np.log(g) - np.log(p)) ** 2).mean()),
        "silog": np.sqrt(np.mean(err**2) - np.mean(err) ** 2) * 100,
        "log10": (np.abs(np.log10(g) - np.log10(p))).mean(),
    }


@pytest.mark.parametrize(("crop", "hw", "max_d"), [("eigen", (480, 640), 10.0), ("garg", (352, 1216), 80.0)])
def test_depth_metrics_match_reference_transcription(crop: str, hw: tuple[int, int], max_d: float) -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, *hw, generator=g, dtype=torch.float64) * 1.2 * max_d  # some gt > max: invalid
    gt[:, ::7] = 0.0  # KITTI-style holes
    pred = gt * torch.exp(0.2 * torch.randn(2, *hw, generator=g, dtype=torch.float64))
    pred[0, 300, 300] = float("nan")
    pred[1, 100, 100] = float("inf")
    metric = DepthMetrics(min_depth=1e-3, max_depth=max_d, crop=crop)
    metric.update(pred.float(), gt.float())
    out = metric.compute()
    refs = [
        _reference_compute_metrics(gt[i].float().numpy(), pred[i].float().numpy(), 1e-3, max_d, crop) for i in (0, 1)
    ]
    for key in DEPTH_METRIC_KEYS:
        assert float(out[key]) == pytest.approx((refs[0][key] + refs[1][key]) / 2, rel=1e-4), key


# ---------------------------------------------------------------------------------------------------------------
# issue 11: the official code's numbers (ZoeDepth / Depth Anything V1 metric_depth, run on these same inputs)
# ---------------------------------------------------------------------------------------------------------------


def two_nyu_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 480x640 NYU predictions and ground truths; the second has 5 valid pixels inside the Eigen crop.

    Image 1 (693 evaluated pixels: 172 exact, 521 with gt 2.624569 and prediction 6.009726): RMSE 2.935155,
    AbsRel 0.969673, δ1 0.248196 (172/693). Image 2 (|gt - pred| = 1.5 on 5 pixels, one within 1.25x): RMSE 1.5,
    AbsRel 0.558333, δ1 0.2.
    """
    gt = torch.zeros(2, 480, 640)
    pred = torch.full((2, 480, 640), 5.0)
    block_gt, block_pred = torch.full((21 * 33,), 2.624569), torch.full((21 * 33,), 6.009726)
    block_gt[:172] = block_pred[:172] = 4.0
    gt[0, 100:121, 100:133] = block_gt.view(21, 33)
    pred[0, 100:121, 100:133] = block_pred.view(21, 33)
    gt[0, 10, :], pred[0, 10, :] = 3.0, 9.0  # valid depth outside the Eigen crop (rows 45:471): not evaluated
    cols = torch.tensor([200, 210, 220, 230, 240])
    gt[1, 300, cols] = torch.tensor([1.5, 2.0, 3.0, 4.0, 9.0])
    pred[1, 300, cols] = torch.tensor([3.0, 3.5, 4.5, 5.5, 7.5])
    return pred, gt


def test_every_image_with_a_valid_pixel_counts_as_zoedepth() -> None:
    """ZoeDepth's compute_metrics + RunningAverageDict on these two images: RMSE 2.217578, AbsRel 0.764003,
    δ1 0.224098 (issue 11.2). V2's rule (min_valid_pixels=10, the suite's old default) drops image 2: 2.935155,
    0.969673, 0.248196. An image without any valid pixel is skipped and counted (ZoeDepth would average a NaN)."""
    pred, gt = two_nyu_images()
    ours = DepthMetrics(min_depth=1e-3, max_depth=10.0, crop="eigen")  # the default: min_valid_pixels=1
    ours.update(pred, gt)
    out = ours.compute()
    assert float(out["rmse"]) == pytest.approx(2.217578, abs=1e-6)
    assert float(out["abs_rel"]) == pytest.approx(0.764003, abs=1e-6)
    assert float(out["d1"]) == pytest.approx(0.224098, abs=1e-6)
    assert int(ours.num_images) == 2 and int(ours.num_skipped) == 0
    v2 = DepthMetrics(min_depth=1e-3, max_depth=10.0, crop="eigen", min_valid_pixels=10)
    v2.update(pred, gt)
    out = v2.compute()
    assert [round(float(out[k]), 6) for k in ("rmse", "abs_rel", "d1")] == [2.935155, 0.969673, 0.248196]
    assert int(v2.num_images) == 1 and int(v2.num_skipped) == 1
    ours.update(pred[:1], torch.zeros(1, 480, 640))  # no valid pixel at all
    assert int(ours.num_images) == 2 and int(ours.num_skipped) == 1
    assert float(ours.compute()["rmse"]) == pytest.approx(2.217578, abs=1e-6)


def smooth_nyu_case() -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth 480x640 ground truth with 10% invalid pixels (0) and a smooth 392x518 prediction."""
    v, u = torch.linspace(0, 1, 480)[:, None], torch.linspace(0, 1, 640)[None, :]
    gt = 1.0 + 6.0 * v + 0.8 * torch.sin(3 * math.pi * u) * torch.cos(math.pi * v)
    gt = torch.where(torch.rand(480, 640, generator=torch.Generator().manual_seed(0)) < 0.1, 0.0, gt)
    v, u = torch.linspace(0, 1, 392)[:, None], torch.linspace(0, 1, 518)[None, :]
    pred = 1.1 + 5.5 * v + 0.6 * torch.sin(3 * math.pi * u + 0.3) * torch.cos(math.pi * v)
    return pred, gt


def test_training_loss_at_ground_truth_resolution_as_zoedepth() -> None:
    """ZoeDepth's SILogLoss (interpolate=True) on these inputs: 0.868830 over 276,418 valid pixels. Resizing the
    ground truth to the prediction's 392x518 with nearest neighbour, as the suite did, gives 0.892645 (issue 11.1).
    The task's training loss receives the ground truth at its resolution from the data and upsamples there."""
    pred, gt = smooth_nyu_case()
    mask = (gt > 1e-3) & (gt < 10)
    assert int(mask.sum()) == 276_418
    assert float(silog_loss(pred[None], gt[None], mask[None])) == pytest.approx(0.868830, abs=1e-6)

    class Constant(nn.Module):  # a "model" whose prediction is `pred` at the input size
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
            assert pixel_values.shape[-2:] == (392, 518)
            return SimpleNamespace(predicted_depth=self.scale * pred[None].expand(len(pixel_values), -1, -1))

    task = DepthTask(Constant(), optimizer=torch.optim.AdamW, max_depth=10.0, eval_crop="eigen")
    batch = {"image": torch.zeros(1, 3, 392, 518), "depth": gt[None], "mask": mask[None]}
    assert float(task.training_loss(batch).detach()) == pytest.approx(0.868830, abs=1e-6)
    assert task.depth_metrics.min_valid_pixels == 1
    gt_small = TF.resize(gt[None], [392, 518], interpolation=TF.InterpolationMode.NEAREST)
    old = silog_loss(pred[None], gt_small, (gt_small > 1e-3) & (gt_small < 10))
    assert float(old) == pytest.approx(0.892645, abs=1e-6)
