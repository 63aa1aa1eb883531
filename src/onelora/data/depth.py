"""Monocular depth datasets (NYU Depth v2, KITTI Eigen, DIODE) in their real on-disk formats.

On-disk formats (as used by the Depth Anything V1 ``metric_depth`` / ZoeDepth code):

* **Split files** (NYU, KITTI): one sample per line, ``<rgb_path> <depth_path> <focal>``, paths relative to
  ``data_root`` (RGB) and ``gt_root`` (depth); a leading ``/`` is ignored. KITTI test lines whose depth is
  ``None`` have no ground truth and are skipped (counted in :attr:`SplitFileDepthDataset.num_skipped`).
* **NYU depth**: single-channel uint16 PNG in millimetres (depth = value / 1000).
* **KITTI depth**: single-channel uint16 PNG, depth = value / 256, 0 = no measurement.
* **DIODE**: ``<root>/<scene>/<scan>/<name>.png`` with ``<name>_depth.npy`` (float, ``H x W x 1``, metres)
  and ``<name>_depth_mask.npy`` (``H x W``, binary).

Sample: ``dict(image, depth, mask, focal, path)``

* ``image``: float32 ``(3, h, w)``, ImageNet-normalised, resized to the network input size (below);
* ``depth``: float32 ``(H, W)`` metres, at the ORIGINAL ground-truth resolution (after the KB crop) for
  evaluation; for training (``train=True``) resized with nearest neighbour to the input size ``(h, w)``;
* ``mask``: bool, ``min_depth < depth < max_depth`` (DIODE: optionally also its ``_depth_mask``);
* ``focal``: float (DIODE: NaN, unknown); ``path``: the RGB file path.

Input-size policy (:func:`input_hw`, Depth Anything V2 ``Resize(keep_aspect_ratio=True, ensure_multiple_of=14,
resize_method="lower_bound")``): scale by ``s = max(H_t / H, W_t / W)`` so that the image covers the target
``(H_t, W_t)`` (``input_size=518`` means ``518 x 518``: short side 518), then round each side to the nearest
multiple of 14, rounding up if that falls below the target. NYU 480x640 -> 518x686; KITTI (KB crop) 352x1216
-> 518x1792. ``keep_aspect=False`` scales each side to its target separately; ``input_size=None`` keeps the
image size. The image is resized bicubically with antialiasing.

Training augmentation (``train=True``; ZoeDepth ``data_mono.py``), in this order: random rotation
U(-rotate_degrees, rotate_degrees) (bilinear image, nearest depth; ZoeDepth default 1 degree), horizontal flip
of image and depth with p = 0.5, then with p = 0.5: ``clip(x**gamma * brightness * colour_c, 0, 1)`` with
gamma ~ U(0.9, 1.1), brightness ~ U(0.75, 1.25) for NYU and U(0.9, 1.1) otherwise, colour_c ~ U(0.9, 1.1) per
channel. Randomness comes from torch's global RNG, so DataLoader workers are seeded by PyTorch.

:class:`DepthDataModule` builds the train/validation sets of one data set from a ``configs/data/*.yaml`` entry
(layouts in :data:`DATA_LAYOUTS`); :func:`warn_max_depth_mismatch` warns once when a metric model's output range
differs from the data set's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from onelora.data.errors import DatasetFormatError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DEPTH_DEFAULTS",
    "input_hw",
    "IMAGE_HW",
    "dataset_input_hw",
    "load_rgb",
    "load_png_depth",
    "kb_crop_box",
    "DepthSampleTransform",
    "SplitFileDepthDataset",
    "DiodeDataset",
    "DATA_LAYOUTS",
    "DepthDataModule",
    "warn_max_depth_mismatch",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Per-dataset defaults: PNG depth divisor, max depth [m], KB crop, brightness range (ZoeDepth ``config.py``).
DEPTH_DEFAULTS: dict[str, dict[str, Any]] = {
    "nyu": {"depth_scale": 1000.0, "max_depth": 10.0, "kb_crop": False, "brightness": (0.75, 1.25)},
    "kitti": {"depth_scale": 256.0, "max_depth": 80.0, "kb_crop": True, "brightness": (0.9, 1.1)},
    "diode": {"depth_scale": 1.0, "max_depth": 80.0, "kb_crop": False, "brightness": (0.9, 1.1)},
}

SPLIT_LAYOUT = (
    "expected a text file with one sample per line, '<rgb_path> <depth_path> <focal>' (depth_path may be 'None' "
    "for samples without ground truth), rgb_path relative to data_root and depth_path relative to gt_root"
)
DIODE_LAYOUT = (
    "expected DIODE layout <root>/<scene>/<scan>/<name>.png with <name>_depth.npy (float, H x W x 1, metres) and "
    "<name>_depth_mask.npy (H x W) next to it, e.g. root = DIODE/val/outdoor"
)
KB_H, KB_W = 352, 1216


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def input_hw(
    h: int,
    w: int,
    size: int | Sequence[int] | None,
    multiple_of: int = 14,
    keep_aspect: bool = True,
) -> tuple[int, int]:
    """Network input size for an ``h x w`` image (Depth Anything V2 "lower_bound" resize; module docstring).

    ``size``: ``int`` (square target ``size x size``), ``(H_t, W_t)``, or ``None`` (keep ``(h, w)``).
    """
    if size is None:
        return h, w
    th, tw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    sh, sw = th / h, tw / w
    if keep_aspect:
        sh = sw = max(sh, sw)

    def constrain(x: float, min_val: int) -> int:
        y = int(round(x / multiple_of) * multiple_of)
        if y < min_val:
            y = int(math.ceil(x / multiple_of) * multiple_of)
        return y

    return constrain(sh * h, th), constrain(sw * w, tw)


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


#: Size of a data set's images as the transform receives them (KITTI after the KB crop; DIODE 768x1024).
IMAGE_HW: dict[str, tuple[int, int]] = {"nyu": (480, 640), "kitti": (KB_H, KB_W), "diode": (768, 1024)}


def dataset_input_hw(
    dataset: str, input_size: int | Sequence[int] | None = 518, keep_aspect: bool = True, multiple_of: int = 14
) -> tuple[int, int]:
    """The network input ``(h, w)`` a data set's training images get (:func:`input_hw` of :data:`IMAGE_HW`).

    The one source of the input size for the data, the dry run's memory estimate and the cost measurements.
    """
    if dataset not in IMAGE_HW:
        raise ValueError(f"unknown depth data set {dataset!r}; valid: {', '.join(IMAGE_HW)}")
    return input_hw(*IMAGE_HW[dataset], input_size, multiple_of, keep_aspect)


def kb_crop_box(h: int, w: int) -> tuple[int, int]:
    """KITTI benchmark (KB) crop: ``(top, left)`` of the bottom 352 rows and the centre 1216 columns."""
    return h - KB_H, int((w - KB_W) / 2)


class DepthSampleTransform:
    """Image/depth processing shared by the datasets: augmentation (train), resize, normalisation, mask.

    See the module docstring for the policy; ``__call__(image_uint8 (3,H,W), depth (H,W)) -> (image, depth, mask)``.
    """

    def __init__(
        self,
        *,
        train: bool,
        input_size: int | Sequence[int] | None = 518,
        keep_aspect: bool = True,
        multiple_of: int = 14,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        rotate_degrees: float = 1.0,
        hflip_p: float = 0.5,
        color_aug_p: float = 0.5,
        brightness: tuple[float, float] = (0.9, 1.1),
    ) -> None:
        self.train = train
        self.input_size = input_size
        self.keep_aspect = keep_aspect
        self.multiple_of = multiple_of
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.rotate_degrees = rotate_degrees
        self.hflip_p = hflip_p
        self.color_aug_p = color_aug_p
        self.brightness = brightness

    @staticmethod
    def _uniform(lo: float, hi: float, n: int = 1) -> Tensor:
        return torch.empty(n).uniform_(lo, hi)

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
        h, w = x.shape[-2:]
        hw = input_hw(h, w, self.input_size, self.multiple_of, self.keep_aspect)
        if hw != (h, w):
            x = TF.resize(x, list(hw), interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
            if self.train:
                depth = TF.resize(depth[None], list(hw), interpolation=TF.InterpolationMode.NEAREST)[0]
        x = TF.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))
        mask = (depth > self.min_depth) & (depth < self.max_depth)
        return x.contiguous(), depth.contiguous(), mask


# --------------------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------------------


class SplitFileDepthDataset(Dataset[dict[str, Any]]):
    """NYU Depth v2 / KITTI Eigen from a ZoeDepth split file (``<rgb_path> <depth_path> <focal>`` per line).

    Args:
        data_root: root of the RGB paths; ``gt_root``: root of the depth paths (``None``: ``data_root``).
        split_file: the split text file (module docstring).
        dataset: ``"nyu"`` (depth PNG / 1000) or ``"kitti"`` (depth PNG / 256, 0 invalid).
        train: enables the augmentation and resizes the depth to the input size.
        input_size, keep_aspect, multiple_of: network input size policy (:func:`input_hw`).
        kb_crop: KITTI benchmark crop of image and depth (bottom 352 rows, centre 1216 columns);
            default ``True`` for KITTI, ``False`` for NYU.
        min_depth, max_depth: validity range of the returned mask (default 1e-3 and 10 (NYU) / 80 (KITTI)).
        rotate_degrees, hflip_p, color_aug_p: augmentation strengths (train only).
        check_files: check at construction that every listed file exists (else lazily, per sample).
    """

    def __init__(
        self,
        data_root: str | Path,
        gt_root: str | Path | None,
        split_file: str | Path,
        dataset: Literal["nyu", "kitti"] = "nyu",
        *,
        train: bool = False,
        input_size: int | Sequence[int] | None = 518,
        keep_aspect: bool = True,
        multiple_of: int = 14,
        kb_crop: bool | None = None,
        min_depth: float = 1e-3,
        max_depth: float | None = None,
        rotate_degrees: float = 1.0,
        hflip_p: float = 0.5,
        color_aug_p: float = 0.5,
        check_files: bool = False,
    ) -> None:
        if dataset not in ("nyu", "kitti"):
            raise ValueError(f"dataset must be 'nyu' or 'kitti', got {dataset!r}")
        defaults = DEPTH_DEFAULTS[dataset]
        self.data_root = Path(data_root)
        self.gt_root = Path(gt_root) if gt_root is not None else self.data_root
        self.split_file = Path(split_file)
        self.dataset = dataset
        self.train = train
        self.depth_scale: float = defaults["depth_scale"]
        self.kb_crop = defaults["kb_crop"] if kb_crop is None else kb_crop
        self.transform = DepthSampleTransform(
            train=train,
            input_size=input_size,
            keep_aspect=keep_aspect,
            multiple_of=multiple_of,
            min_depth=min_depth,
            max_depth=defaults["max_depth"] if max_depth is None else max_depth,
            rotate_degrees=rotate_degrees,
            hflip_p=hflip_p,
            color_aug_p=color_aug_p,
            brightness=defaults["brightness"],
        )
        #: ``(rgb_path, depth_path, focal, line_number)`` per sample.
        self.samples: list[tuple[Path, Path, float, int]] = []
        #: number of lines skipped because their depth path is ``None`` (no ground truth).
        self.num_skipped = 0
        self._parse_split()
        if check_files:
            for rgb, depth, _, line in self.samples:
                for kind, p in (("RGB image", rgb), ("depth map", depth)):
                    if not p.is_file():
                        raise DatasetFormatError(f"{kind} not found: {p}{self._context(line)}")

    def _context(self, line: int) -> str:
        return f" (listed in {self.split_file}, line {line}; {SPLIT_LAYOUT})"

    def _parse_split(self) -> None:
        if not self.split_file.is_file():
            raise DatasetFormatError(f"split file not found: {self.split_file}; {SPLIT_LAYOUT}")
        with self.split_file.open() as fh:
            for line_no, raw in enumerate(fh, start=1):
                fields = raw.split()
                if not fields:
                    continue
                if len(fields) != 3:
                    raise DatasetFormatError(
                        f"{self.split_file}, line {line_no}: {len(fields)} fields in {raw.strip()!r}; {SPLIT_LAYOUT}"
                    )
                rgb, depth, focal = fields
                try:
                    focal_f = float(focal)
                except ValueError as exc:
                    raise DatasetFormatError(
                        f"{self.split_file}, line {line_no}: focal {focal!r} is not a number; {SPLIT_LAYOUT}"
                    ) from exc
                if depth == "None":
                    self.num_skipped += 1
                    continue
                self.samples.append(
                    (self.data_root / rgb.lstrip("/"), self.gt_root / depth.lstrip("/"), focal_f, line_no)
                )
        if not self.samples:
            raise DatasetFormatError(f"split file {self.split_file} lists no sample with ground truth; {SPLIT_LAYOUT}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb_path, depth_path, focal, line = self.samples[index]
        ctx = self._context(line)
        image = load_rgb(rgb_path, ctx)
        depth = torch.from_numpy(load_png_depth(depth_path, self.depth_scale, ctx))
        if tuple(image.shape[-2:]) != tuple(depth.shape):
            raise DatasetFormatError(
                f"image {rgb_path} is {tuple(image.shape[-2:])} but depth map {depth_path} is {tuple(depth.shape)}{ctx}"
            )
        if self.kb_crop:
            h, w = depth.shape
            if h < KB_H or w < KB_W:
                raise DatasetFormatError(f"KB crop needs at least {KB_H}x{KB_W} pixels, {rgb_path} is {h}x{w}{ctx}")
            top, left = kb_crop_box(h, w)
            image = TF.crop(image, top, left, KB_H, KB_W)
            depth = depth[top : top + KB_H, left : left + KB_W]
        image_t, depth_t, mask = self.transform(image, depth)
        return {"image": image_t, "depth": depth_t, "mask": mask, "focal": focal, "path": str(rgb_path)}


class DiodeDataset(Dataset[dict[str, Any]]):
    """DIODE (e.g. ``DIODE/val/outdoor``): ``<root>/*/*/*.png`` with ``_depth.npy`` / ``_depth_mask.npy``.

    The reference evaluation (ZoeDepth ``data/diode.py``) loads ``_depth_mask.npy`` but does not use it: validity
    is ``min_depth < depth < max_depth`` only. ``use_depth_mask=True`` additionally intersects the mask with it
    (the returned depth is then set to 0 outside the DIODE mask, so the mask survives train-time resizing).
    Defaults: outdoor range (1e-3, 80); use ``max_depth=10`` for DIODE indoor. Other arguments as in
    :class:`SplitFileDepthDataset`; ``focal`` is NaN (not provided by DIODE files).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        train: bool = False,
        input_size: int | Sequence[int] | None = 518,
        keep_aspect: bool = True,
        multiple_of: int = 14,
        min_depth: float = 1e-3,
        max_depth: float = 80.0,
        use_depth_mask: bool = False,
        rotate_degrees: float = 1.0,
        hflip_p: float = 0.5,
        color_aug_p: float = 0.5,
    ) -> None:
        self.root = Path(root)
        self.use_depth_mask = use_depth_mask
        self.transform = DepthSampleTransform(
            train=train,
            input_size=input_size,
            keep_aspect=keep_aspect,
            multiple_of=multiple_of,
            min_depth=min_depth,
            max_depth=max_depth,
            rotate_degrees=rotate_degrees,
            hflip_p=hflip_p,
            color_aug_p=color_aug_p,
            brightness=DEPTH_DEFAULTS["diode"]["brightness"],
        )
        if not self.root.is_dir():
            raise DatasetFormatError(f"DIODE root not found: {self.root}; {DIODE_LAYOUT}")
        self.images: list[Path] = sorted(
            p for p in self.root.glob("*/*/*.png") if not p.stem.endswith(("_depth", "_depth_mask"))
        )
        if not self.images:
            raise DatasetFormatError(f"no DIODE image found under {self.root} (glob '*/*/*.png'); {DIODE_LAYOUT}")

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def _load_npy(path: Path, what: str) -> np.ndarray:
        if not path.is_file():
            raise DatasetFormatError(f"DIODE {what} not found: {path}; {DIODE_LAYOUT}")
        try:
            return np.load(path)
        except (OSError, ValueError) as exc:
            raise DatasetFormatError(f"cannot read DIODE {what} {path}: {exc}; {DIODE_LAYOUT}") from exc

    def __getitem__(self, index: int) -> dict[str, Any]:
        img_path = self.images[index]
        image = load_rgb(img_path, f"; {DIODE_LAYOUT}")
        h, w = image.shape[-2:]
        depth_path = img_path.with_name(img_path.stem + "_depth.npy")
        mask_path = img_path.with_name(img_path.stem + "_depth_mask.npy")
        depth_np = self._load_npy(depth_path, "depth")
        if depth_np.ndim == 3 and depth_np.shape[-1] == 1:
            depth_np = depth_np[..., 0]
        if depth_np.shape != (h, w) or not np.issubdtype(depth_np.dtype, np.floating):
            raise DatasetFormatError(
                f"DIODE depth {depth_path} has dtype {depth_np.dtype} and shape {depth_np.shape}; expected float "
                f"metres of shape ({h}, {w}, 1) matching {img_path}"
            )
        mask_np = self._load_npy(mask_path, "depth mask")
        if mask_np.ndim == 3 and mask_np.shape[-1] == 1:
            mask_np = mask_np[..., 0]
        if mask_np.shape != (h, w):
            raise DatasetFormatError(
                f"DIODE depth mask {mask_path} has shape {mask_np.shape}; expected ({h}, {w}) matching {img_path}"
            )
        depth = torch.from_numpy(depth_np.astype(np.float32))
        depth_mask = torch.from_numpy(mask_np > 0)
        if self.use_depth_mask:
            # zero the depth outside the DIODE mask so it also survives the train-time resize/rotation
            depth = torch.where(depth_mask, depth, 0.0)
        image_t, depth_t, mask = self.transform(image, depth)
        return {"image": image_t, "depth": depth_t, "mask": mask, "focal": float("nan"), "path": str(img_path)}


# --------------------------------------------------------------------------------------------------------------
# the Lightning data module
# --------------------------------------------------------------------------------------------------------------

#: The on-disk layout each data set's config expects (``configs/data/{nyu,kitti,diode_outdoor}.yaml``), quoted by
#: the errors so a wrong ``paths.data_dir`` is diagnosed from the message alone.
DATA_LAYOUTS: dict[str, str] = {
    "nyu": (
        "expected NYU Depth v2 as ZoeDepth/BTS use it: <data_dir>/nyu/sync/<scene>/rgb_XXXXX.jpg and "
        "sync_depth_XXXXX.png (uint16 PNG, mm) for training, <data_dir>/nyu/official_splits/test/<scene>/... for "
        "testing, and ZoeDepth's split files <data_dir>/train_test_inputs/nyudepthv2_{train,test}_files_with_gt.txt"
    ),
    "kitti": (
        "expected KITTI as ZoeDepth uses it: RGB <data_dir>/kitti/raw_data/<date>/<drive>/image_02/data/*.png, "
        "depth <data_dir>/kitti/data_depth_annotated/<drive>/proj_depth/groundtruth/image_02/*.png (uint16 PNG / 256; "
        "the annotated train and val drives merged in one folder), and ZoeDepth's split files "
        "<data_dir>/train_test_inputs/kitti_eigen_{train,test}_files_with_gt.txt"
    ),
    "diode": DIODE_LAYOUT + " (<data_dir>/diode/train/outdoor for training, <data_dir>/diode/val/outdoor for testing)",
}

_WARNED_RANGES: set[tuple[float, float, str]] = set()


def warn_max_depth_mismatch(model_max_depth: float | None, data_max_depth: float, data_name: str = "data") -> bool:
    """Warn (once per process and pair) when a metric model's output range differs from the data set's.

    A Depth Anything metric head predicts ``sigmoid(.) * max_depth``: a smaller ``max_depth`` than the data's cannot
    reach its far depths, a larger one spends output resolution on depths the data never has (evaluation clamps to
    the data's range either way). Returns whether it warned.
    """
    if model_max_depth is None or math.isclose(float(model_max_depth), float(data_max_depth)):
        return False
    key = (float(model_max_depth), float(data_max_depth), data_name)
    if key in _WARNED_RANGES:
        return False
    _WARNED_RANGES.add(key)
    effect = (
        f"it cannot predict depths beyond {model_max_depth:g} m"
        if model_max_depth < data_max_depth
        else f"predictions above {data_max_depth:g} m are clamped at evaluation"
    )
    warnings.warn(
        f"model max_depth {model_max_depth:g} m differs from the {data_name} depth range (max {data_max_depth:g} m): "
        f"{effect}; model.overrides.max_depth={data_max_depth:g} matches them (the model configs' default)",
        UserWarning,
        stacklevel=2,
    )
    return True


class DepthDataModule(L.LightningDataModule):
    """Train/validation loaders of NYU Depth v2, KITTI (Eigen split) or DIODE from their on-disk formats.

    Args:
        dataset: ``"nyu"`` | ``"kitti"`` (split files, :class:`SplitFileDepthDataset`) or ``"diode"``
            (:class:`DiodeDataset`; ``train_root``/``val_root`` e.g. ``DIODE/train/outdoor``, ``DIODE/val/outdoor``).
        train_root, val_root: root of the RGB paths (split files) or the DIODE folder.
        train_gt_root, val_gt_root: root of the depth paths of the split files (``None``: the RGB root).
        train_split, val_split: the split files (NYU, KITTI; unused for DIODE).
        input_size, keep_aspect, multiple_of: network input size (:func:`input_hw`).
        min_depth, max_depth: validity range of the masks (``max_depth=None``: the data set's default).
        rotate_degrees, hflip_p, color_aug_p: training augmentation (module docstring); ``kb_crop`` (KITTI) and
            ``use_depth_mask`` (DIODE) as in the datasets.
        batch_size: training batch size; ``eval_batch_size``: validation batch size (default 1: the ground truth
            is evaluated at its own resolution; every image of the standard test sets has the same size, so a larger
            value also works there).
        num_workers, seed: loader workers; the training order depends on (seed, epoch) only (resumable).
        train_subset, val_subset: use only the first n samples (quick checks).
        check_files: check at setup that every file a split file lists exists (a missing image is then reported
            before training starts, not by a loader worker mid-epoch).
    """

    def __init__(
        self,
        dataset: Literal["nyu", "kitti", "diode"],
        train_root: str,
        val_root: str,
        train_gt_root: str | None = None,
        val_gt_root: str | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        *,
        input_size: int | Sequence[int] | None = 518,
        keep_aspect: bool = True,
        multiple_of: int = 14,
        min_depth: float = 1e-3,
        max_depth: float | None = None,
        rotate_degrees: float = 1.0,
        hflip_p: float = 0.5,
        color_aug_p: float = 0.5,
        kb_crop: bool | None = None,
        use_depth_mask: bool = False,
        batch_size: int = 16,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        seed: int = 0,
        train_subset: int | None = None,
        val_subset: int | None = None,
        check_files: bool = True,
    ) -> None:
        super().__init__()
        if dataset not in DATA_LAYOUTS:
            raise ValueError(f"dataset must be one of {', '.join(DATA_LAYOUTS)}, got {dataset!r}")
        if dataset != "diode" and (not train_split or not val_split):
            raise ValueError(f"dataset {dataset!r} needs train_split and val_split (split files)")
        self.dataset = dataset
        self.roots = {"train": (train_root, train_gt_root, train_split), "val": (val_root, val_gt_root, val_split)}
        self.input_size = list(input_size) if isinstance(input_size, Sequence) else input_size
        self.keep_aspect, self.multiple_of = keep_aspect, multiple_of
        self.min_depth = min_depth
        self.max_depth = float(DEPTH_DEFAULTS[dataset]["max_depth"] if max_depth is None else max_depth)
        self.augment = {"rotate_degrees": rotate_degrees, "hflip_p": hflip_p, "color_aug_p": color_aug_p}
        self.kb_crop, self.use_depth_mask = kb_crop, use_depth_mask
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.subsets = {"train": train_subset, "val": val_subset}
        self.check_files = check_files
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _build(self, split: Literal["train", "val"]) -> Dataset:
        root, gt_root, split_file = self.roots[split]
        train = split == "train"
        common: dict[str, Any] = {
            "train": train,
            "input_size": self.input_size,
            "keep_aspect": self.keep_aspect,
            "multiple_of": self.multiple_of,
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
            **self.augment,
        }
        hint = f"; {DATA_LAYOUTS[self.dataset]}; set paths.data_dir= (or data.root=) to where the data set lies"
        if self.dataset == "diode":
            if not Path(root).is_dir():
                raise DatasetFormatError(f"DIODE {split} folder not found: {root}{hint}")
            ds: Dataset = DiodeDataset(root, use_depth_mask=self.use_depth_mask, **common)
        else:
            if not Path(split_file).is_file():  # type: ignore[arg-type]
                raise DatasetFormatError(f"{self.dataset} {split} split file not found: {split_file}{hint}")
            ds = SplitFileDepthDataset(
                root, gt_root, split_file, self.dataset, kb_crop=self.kb_crop, check_files=self.check_files, **common
            )  # type: ignore[arg-type]
        n = self.subsets[split]
        return ds if n is None else Subset(ds, range(min(int(n), len(ds))))  # type: ignore[arg-type]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._build("train")
        if self.val_set is None:
            self.val_set = self._build("val")

    def train_dataloader(self) -> DataLoader:
        from .classification import seeded_loader

        return seeded_loader(self.train_set, self.batch_size, self.seed, self.num_workers, self.trainer)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
