"""What every depth data set shares: file readers, the network input size, and the sample transform.

Sample (every data set): ``dict(image, depth, mask, focal, path)``

* ``image``: float32 ``(3, h, w)``, ImageNet-normalised, resized to the network input size (below);
* ``depth``: float32 ``(H, W)`` metres at the ground truth's OWN resolution (after the KB crop for KITTI, after the
  training augmentation): the training loss upsamples the prediction to it, as evaluation does (ZoeDepth);
* ``mask``: bool ``(H, W)``, ``min_depth < depth < max_depth`` (DIODE: optionally also its ``_depth_mask``);
* ``focal``: float (DIODE: NaN, unknown); ``path``: the RGB file path.

Input size (:func:`input_hw`): the image is resized to ``input_size`` and each side made a multiple of 14 (DINOv2's
patch). ``resize_method="minimal"`` is Depth Anything V1 / ZoeDepth's (``zoedepth/models/base_models/
depth_anything.py`` ``Resize``, used by the paper's recipe): each side rounded to the NEAREST multiple (KITTI's
``img_size`` 384x768 -> 378x770); ``"lower_bound"`` is V2's (never below the target: 392x770). ``keep_aspect=False``
scales each side to its target separately (ZoeDepth's training); ``True`` scales both by one factor
(``lower_bound``: the one that covers the target; ``minimal``: the one closer to 1). ``interpolation="bilinear"``
resizes as ZoeDepth does (``align_corners=True``, no antialiasing); ``"bicubic"`` as V2 (antialiased).
:func:`network_input_size` gives the size a data config feeds the network, for the dry run and the benchmarks.

Training augmentation (``train=True``; ZoeDepth ``data_mono.py``), in this order: random rotation
U(-rotate_degrees, rotate_degrees) (bilinear image, nearest depth; ZoeDepth default 1 degree), horizontal flip of
image and depth with p = 0.5, then with p = 0.5: ``clip(x**gamma * brightness * colour_c, 0, 1)`` with gamma ~
U(0.9, 1.1), brightness ~ U(0.75, 1.25) for NYU and U(0.9, 1.1) otherwise, colour_c ~ U(0.9, 1.1) per channel.
Randomness comes from torch's global RNG, so DataLoader workers are seeded by PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import default_collate

from ..errors import DatasetFormatError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DEPTH_DEFAULTS",
    "KB_H",
    "KB_W",
    "IMAGE_HW",
    "input_hw",
    "dataset_input_hw",
    "network_input_size",
    "load_rgb",
    "load_png_depth",
    "kb_crop_box",
    "DepthSampleTransform",
    "collate_depth",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Per data set: PNG depth divisor, max depth [m], KB crop, brightness range (ZoeDepth ``config.py``).
DEPTH_DEFAULTS: dict[str, dict[str, Any]] = {
    "nyu": {"depth_scale": 1000.0, "max_depth": 10.0, "kb_crop": False, "brightness": (0.75, 1.25)},
    "kitti": {"depth_scale": 256.0, "max_depth": 80.0, "kb_crop": True, "brightness": (0.9, 1.1)},
    "diode": {"depth_scale": 1.0, "max_depth": 80.0, "kb_crop": False, "brightness": (0.9, 1.1)},
}

KB_H, KB_W = 352, 1216
KITTI_RAW_HW = (375, 1242)
#: Size of a data set's images as the transform receives them (KITTI after the KB crop; DIODE 768x1024).
IMAGE_HW: dict[str, tuple[int, int]] = {"nyu": (480, 640), "kitti": (KB_H, KB_W), "diode": (768, 1024)}
ResizeMethod = Literal["minimal", "lower_bound"]
Interpolation = Literal["bilinear", "bicubic"]


def input_hw(
    h: int,
    w: int,
    size: int | Sequence[int] | None,
    multiple_of: int = 14,
    keep_aspect: bool = True,
    resize_method: ResizeMethod = "minimal",
) -> tuple[int, int]:
    """Network input size for an ``h x w`` image (module docstring; default: ZoeDepth's rounding).

    ``size``: ``int`` (square target ``size x size``), ``(H_t, W_t)``, or ``None`` (keep ``(h, w)``).
    """
    if size is None:
        return h, w
    if resize_method not in ("minimal", "lower_bound"):
        raise ValueError(f"resize_method must be 'minimal' or 'lower_bound', got {resize_method!r}")
    th, tw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    sh, sw = th / h, tw / w
    if keep_aspect:
        if resize_method == "lower_bound":
            sh = sw = max(sh, sw)
        else:  # the scale closer to 1 (ZoeDepth's "minimal")
            sh = sw = sw if abs(1 - sw) < abs(1 - sh) else sh

    def constrain(x: float, min_val: int) -> int:
        # np.round: round half to even, as the reference
        y = int(np.round(x / multiple_of) * multiple_of)
        if resize_method == "lower_bound" and y < min_val:
            y = int(math.ceil(x / multiple_of) * multiple_of)
        return y

    return constrain(sh * h, th), constrain(sw * w, tw)


def dataset_input_hw(
    dataset: str,
    input_size: int | Sequence[int] | None = 518,
    keep_aspect: bool = True,
    multiple_of: int = 14,
    resize_method: ResizeMethod = "minimal",
) -> tuple[int, int]:
    """The network input ``(h, w)`` a data set's images get (:func:`input_hw` of :data:`IMAGE_HW`).

    The one source of the input size for the data, the dry run's memory estimate and the cost measurements.
    """
    if dataset not in IMAGE_HW:
        raise ValueError(f"unknown depth data set {dataset!r}; valid: {', '.join(IMAGE_HW)}")
    return input_hw(*IMAGE_HW[dataset], input_size, multiple_of, keep_aspect, resize_method)


def network_input_size(data_module: Mapping[str, Any]) -> tuple[int, int]:
    """:func:`dataset_input_hw` of a depth data config (``cfg.data.module``), with the data module's defaults.

    Every image of a data set has one size, so this is the size of every training and validation batch.
    """
    dataset = str(data_module.get("dataset", "nyu"))
    size = data_module.get("input_size", 518)
    size = size if size is None or isinstance(size, int) else [int(x) for x in size]
    keep_aspect, multiple_of = bool(data_module.get("keep_aspect", True)), int(data_module.get("multiple_of", 14))
    resize_method = data_module.get("resize_method", "minimal")
    if dataset == "kitti" and data_module.get("kb_crop") is False:
        return input_hw(*KITTI_RAW_HW, size, multiple_of, keep_aspect, resize_method)
    return dataset_input_hw(dataset, size, keep_aspect, multiple_of, resize_method)


def load_rgb(path: Path, context: str = "") -> Tensor:
    """Read an image file as a uint8 ``(3, H, W)`` RGB tensor; :class:`DatasetFormatError` names the file."""
    if not path.is_file():
        raise DatasetFormatError(f"RGB image not found: {path}{context}")
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetFormatError(f"cannot read RGB image {path}{context}: {exc}") from exc
    return TF.pil_to_tensor(rgb)


def load_png_depth(path: Path, scale: float, context: str = "") -> np.ndarray:
    """Read a single-channel 16-bit PNG depth map as float32 ``(H, W)`` = value / ``scale`` (metres).

    Raises :class:`DatasetFormatError` naming the file if it is missing, unreadable, or not a single-channel
    16-bit image (e.g. an 8-bit or RGB PNG, which would silently give wrong metric depth).
    """
    if not path.is_file():
        raise DatasetFormatError(f"depth map not found: {path}{context}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetFormatError(f"cannot read depth map {path}{context}: {exc}") from exc
    ok = mode in ("I;16", "I;16B", "I;16L", "I;16N") or (
        mode == "I" and arr.ndim == 2 and arr.size > 0 and int(arr.min()) >= 0 and int(arr.max()) <= 65535
    )
    if not ok or arr.ndim != 2:
        raise DatasetFormatError(
            f"depth map {path}{context} has PIL mode {mode!r}, dtype {arr.dtype} and shape {arr.shape}; expected a "
            f"single-channel 16-bit PNG (uint16, depth = value / {scale:g})"
        )
    return arr.astype(np.float32) / np.float32(scale)


def kb_crop_box(h: int, w: int) -> tuple[int, int]:
    """KITTI benchmark (KB) crop: ``(top, left)`` of the bottom 352 rows and the centre 1216 columns."""
    return h - KB_H, int((w - KB_W) / 2)


class DepthSampleTransform:
    """Image/depth processing shared by the data sets: augmentation (train), image resize, normalisation, mask.

    See the module docstring; ``__call__(image_uint8 (3,H,W), depth (H,W)) -> (image (3,h,w), depth (H,W), mask)``.
    """

    def __init__(
        self,
        *,
        train: bool,
        input_size: int | Sequence[int] | None = 518,
        keep_aspect: bool = True,
        multiple_of: int = 14,
        resize_method: ResizeMethod = "minimal",
        interpolation: Interpolation = "bilinear",
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        rotate_degrees: float = 1.0,
        hflip_p: float = 0.5,
        color_aug_p: float = 0.5,
        brightness: tuple[float, float] = (0.9, 1.1),
    ) -> None:
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
        self.train = train
        self.input_size = input_size
        self.keep_aspect = keep_aspect
        self.multiple_of = multiple_of
        self.resize_method: ResizeMethod = resize_method
        self.interpolation: Interpolation = interpolation
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.rotate_degrees = rotate_degrees
        self.hflip_p = hflip_p
        self.color_aug_p = color_aug_p
        self.brightness = brightness

    @staticmethod
    def _uniform(lo: float, hi: float, n: int = 1) -> Tensor:
        return torch.empty(n).uniform_(lo, hi)

    def resize(self, x: Tensor) -> Tensor:
        """The float ``(3, H, W)`` image at the network input size."""
        h, w = x.shape[-2:]
        hw = input_hw(h, w, self.input_size, self.multiple_of, self.keep_aspect, self.resize_method)
        if hw == (h, w):
            return x
        if self.interpolation == "bilinear":  # ZoeDepth: inside the model, on the [0, 1] image
            return F.interpolate(x[None], size=hw, mode="bilinear", align_corners=True)[0]
        return TF.resize(x, list(hw), interpolation=TF.InterpolationMode.BICUBIC, antialias=True)

    def __call__(self, image: Tensor, depth: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = TF.to_dtype(image, torch.float32, scale=True)
        if self.train:
            if self.rotate_degrees > 0:
                angle = float(self._uniform(-self.rotate_degrees, self.rotate_degrees))
                x = TF.rotate(x, angle, interpolation=TF.InterpolationMode.BILINEAR)
                depth = TF.rotate(depth[None], angle, interpolation=TF.InterpolationMode.NEAREST)[0]
            if float(torch.rand(())) < self.hflip_p:
                x = TF.horizontal_flip(x)
                depth = TF.horizontal_flip(depth)
            if float(torch.rand(())) < self.color_aug_p:
                # One clip at the end, exactly as the reference (torchvision's adjust_* clip after every step).
                gamma = float(self._uniform(0.9, 1.1))
                bright = float(self._uniform(*self.brightness))
                colors = self._uniform(0.9, 1.1, 3).view(3, 1, 1)
                x = (x.pow(gamma) * bright * colors).clamp(0.0, 1.0)
        x = TF.normalize(self.resize(x), list(IMAGENET_MEAN), list(IMAGENET_STD))
        mask = (depth > self.min_depth) & (depth < self.max_depth)
        return x.contiguous(), depth.contiguous(), mask


def collate_depth(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate``, with one clear error when the ground truths of a batch differ in size.

    The ground truth stays at its own resolution, so a batch needs every depth map of one size: true of each
    standard data set (NYU 480x640, KITTI 352x1216 after the KB crop, DIODE 768x1024).
    """
    sizes = {tuple(s["depth"].shape) for s in samples}
    if len(sizes) > 1:
        first = {tuple(s["depth"].shape): s["path"] for s in samples}
        listing = ", ".join(f"{'x'.join(map(str, hw))} ({path})" for hw, path in first.items())
        raise DatasetFormatError(
            f"depth maps of different sizes in one training batch: {listing}; every ground truth of a data set must "
            "have one size (the loss is computed at its resolution): resize the odd files, or use batch_size=1"
        )
    return default_collate(samples)
