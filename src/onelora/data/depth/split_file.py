"""ZoeDepth's split files (NYU Depth v2, KITTI Eigen): one sample per line, ``<rgb_path> <depth_path> <focal>``.

Paths are relative to ``data_root`` (RGB) and ``gt_root`` (depth); a leading ``/`` is ignored. Test lines whose
depth is ``None`` have no ground truth and are skipped (counted in :attr:`SplitFileDepthDataset.num_skipped`).
The per-data-set readers are :class:`~onelora.data.depth.nyu.NYUDepthDataset` and
:class:`~onelora.data.depth.kitti.KITTIDepthDataset`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

from ..errors import DatasetFormatError
from .common import DEPTH_DEFAULTS, KB_H, KB_W, DepthSampleTransform, kb_crop_box, load_png_depth, load_rgb

__all__ = ["SPLIT_LAYOUT", "SplitFileDepthDataset"]

SPLIT_LAYOUT = (
    "expected a text file with one sample per line, '<rgb_path> <depth_path> <focal>' (depth_path may be 'None' "
    "for samples without ground truth), rgb_path relative to data_root and depth_path relative to gt_root"
)


class SplitFileDepthDataset(Dataset[dict[str, Any]]):
    """NYU Depth v2 / KITTI Eigen from a ZoeDepth split file (module docstring); samples as ``common``'s docstring.

    Args:
        data_root: root of the RGB paths; ``gt_root``: root of the depth paths (``None``: ``data_root``).
        split_file: the split text file.
        dataset: ``"nyu"`` (depth PNG / 1000) or ``"kitti"`` (depth PNG / 256, 0 invalid).
        train: enables the augmentation.
        input_size, keep_aspect, multiple_of, resize_method, interpolation: the image's network input size and
            resampling (:func:`~onelora.data.depth.common.input_hw`).
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
        resize_method: Literal["minimal", "lower_bound"] = "minimal",
        interpolation: Literal["bilinear", "bicubic"] = "bilinear",
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
            resize_method=resize_method,
            interpolation=interpolation,
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
