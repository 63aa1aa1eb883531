"""NYU Depth v2 (indoor) as ZoeDepth / BTS lay it out: split files, RGB JPEG, depth uint16 PNG in millimetres."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .split_file import SplitFileDepthDataset

__all__ = ["NYU_LAYOUT", "NYUDepthDataset"]

NYU_LAYOUT = (
    "expected NYU Depth v2 as ZoeDepth/BTS use it: <data_dir>/nyu/sync/<scene>/rgb_XXXXX.jpg and "
    "sync_depth_XXXXX.png (uint16 PNG, mm) for training, <data_dir>/nyu/official_splits/test/<scene>/... for "
    "testing, and ZoeDepth's split files <data_dir>/train_test_inputs/nyudepthv2_{train,test}_files_with_gt.txt"
)


class NYUDepthDataset(SplitFileDepthDataset):
    """NYU Depth v2 from ZoeDepth's ``nyudepthv2_{train,test}_files_with_gt.txt``: depth = PNG / 1000, range
    (1e-3, 10) m, 480x640 images, brightness augmentation U(0.75, 1.25). Arguments as :class:`SplitFileDepthDataset`."""

    def __init__(
        self, data_root: str | Path, gt_root: str | Path | None, split_file: str | Path, **kwargs: Any
    ) -> None:
        super().__init__(data_root, gt_root, split_file, "nyu", **kwargs)
