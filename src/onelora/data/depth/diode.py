"""DIODE (e.g. ``DIODE/val/outdoor``) in its release layout: ``<root>/<scene>/<scan>/<name>.png`` with
``<name>_depth.npy`` (float, ``H x W x 1``, metres) and ``<name>_depth_mask.npy`` (``H x W``, binary)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

from ..errors import DatasetFormatError
from .common import DEPTH_DEFAULTS, DepthSampleTransform, load_rgb

__all__ = ["DIODE_LAYOUT", "DiodeDataset"]

DIODE_LAYOUT = (
    "expected DIODE layout <root>/<scene>/<scan>/<name>.png with <name>_depth.npy (float, H x W x 1, metres) and "
    "<name>_depth_mask.npy (H x W) next to it, e.g. root = DIODE/val/outdoor"
)


class DiodeDataset(Dataset[dict[str, Any]]):
    """DIODE: ``<root>/*/*/*.png`` with ``_depth.npy`` / ``_depth_mask.npy``; samples as ``common``'s docstring.

    The reference evaluation (ZoeDepth ``data/diode.py``) loads ``_depth_mask.npy`` but does not use it: validity
    is ``min_depth < depth < max_depth`` only. ``use_depth_mask=True`` additionally intersects the mask with it
    (the returned depth is then set to 0 outside the DIODE mask, so the mask survives the train-time rotation).
    ``short_side=480`` first resizes the image (not the depth) to a short side of 480 pixels, bilinearly without
    antialiasing, as ZoeDepth's DIODE loader (``transforms.Resize(480)``, torchvision 0.14); the network input size
    follows from there. Defaults: outdoor range (1e-3, 80); use ``max_depth=10`` for DIODE indoor. Other arguments as in
    :class:`~onelora.data.depth.split_file.SplitFileDepthDataset`; ``focal`` is NaN (not provided by DIODE files).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        train: bool = False,
        input_size: int | Sequence[int] | None = 518,
        keep_aspect: bool = True,
        multiple_of: int = 14,
        resize_method: Literal["minimal", "lower_bound"] = "minimal",
        interpolation: Literal["bilinear", "bicubic"] = "bilinear",
        min_depth: float = 1e-3,
        max_depth: float = 80.0,
        use_depth_mask: bool = False,
        short_side: int | None = None,
        rotate_degrees: float = 1.0,
        hflip_p: float = 0.5,
        color_aug_p: float = 0.5,
    ) -> None:
        self.root = Path(root)
        self.use_depth_mask = use_depth_mask
        self.short_side = short_side
        self.transform = DepthSampleTransform(
            train=train,
            input_size=input_size,
            keep_aspect=keep_aspect,
            multiple_of=multiple_of,
            resize_method=resize_method,
            interpolation=interpolation,
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
            # zero the depth outside the DIODE mask so it also survives the train-time rotation
            depth = torch.where(depth_mask, depth, 0.0)
        image_t, depth_t, mask = self.transform(self._pre_resize(image), depth)
        return {"image": image_t, "depth": depth_t, "mask": mask, "focal": float("nan"), "path": str(img_path)}

    def _pre_resize(self, image: torch.Tensor) -> torch.Tensor:
        """The uint8 image, or with ``short_side`` the float [0, 1] image resized as ZoeDepth's DIODE loader."""
        if self.short_side is None:
            return image
        h, w = image.shape[-2:]
        hw = (
            (self.short_side, int(self.short_side * w / h))
            if h <= w
            else (int(self.short_side * h / w), self.short_side)
        )
        x = TF.to_dtype(image, torch.float32, scale=True)
        return F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False, antialias=False)[0]
