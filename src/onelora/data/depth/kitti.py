"""KITTI (Eigen split) as ZoeDepth uses it: raw RGB PNG, annotated depth uint16 PNG / 256 (0 = no measurement)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .split_file import SplitFileDepthDataset

__all__ = ["KITTI_LAYOUT", "KITTIDepthDataset"]

KITTI_LAYOUT = (
    "expected KITTI as ZoeDepth uses it: RGB <data_dir>/kitti/raw_data/<date>/<drive>/image_02/data/*.png, "
    "depth <data_dir>/kitti/data_depth_annotated/<drive>/proj_depth/groundtruth/image_02/*.png (uint16 PNG / 256; "
    "the annotated train and val drives merged in one folder), and ZoeDepth's split files "
    "<data_dir>/train_test_inputs/kitti_eigen_{train,test}_files_with_gt.txt"
)


class KITTIDepthDataset(SplitFileDepthDataset):
    """KITTI from ZoeDepth's ``kitti_eigen_{train,test}_files_with_gt.txt``: depth = PNG / 256, range (1e-3, 80) m,
    the KB crop (bottom 352 rows, centre 1216 columns) of image and depth by default, test lines without ground truth
    (``None``) skipped. Arguments as :class:`SplitFileDepthDataset`."""

    def __init__(
        self, data_root: str | Path, gt_root: str | Path | None, split_file: str | Path, **kwargs: Any
    ) -> None:
        super().__init__(data_root, gt_root, split_file, "kitti", **kwargs)
