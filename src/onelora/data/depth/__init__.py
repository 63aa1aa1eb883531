"""Monocular depth data sets (NYU Depth v2, KITTI Eigen, DIODE) in their real on-disk formats.

One module per data set (``nyu``, ``kitti``, ``diode``; NYU and KITTI share ZoeDepth's split-file reader,
``split_file``), what they share (``common``: readers, the network input size, the sample transform) and the Lightning
data module (``module``). Every name is importable from ``onelora.data.depth``.
"""

from .common import (
    DEPTH_DEFAULTS,
    IMAGE_HW,
    IMAGENET_MEAN,
    IMAGENET_STD,
    KB_H,
    KB_W,
    DepthSampleTransform,
    collate_depth,
    dataset_input_hw,
    input_hw,
    kb_crop_box,
    load_png_depth,
    load_rgb,
    network_input_size,
)
from .diode import DIODE_LAYOUT, DiodeDataset
from .kitti import KITTI_LAYOUT, KITTIDepthDataset
from .module import DATA_LAYOUTS, DepthDataModule, warn_max_depth_mismatch
from .nyu import NYU_LAYOUT, NYUDepthDataset
from .split_file import SPLIT_LAYOUT, SplitFileDepthDataset

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
    "collate_depth",
    "DepthSampleTransform",
    "SPLIT_LAYOUT",
    "SplitFileDepthDataset",
    "NYU_LAYOUT",
    "NYUDepthDataset",
    "KITTI_LAYOUT",
    "KITTIDepthDataset",
    "DIODE_LAYOUT",
    "DiodeDataset",
    "DATA_LAYOUTS",
    "DepthDataModule",
    "warn_max_depth_mismatch",
]
