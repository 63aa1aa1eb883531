"""The Lightning data module of the depth data sets (``configs/data/{nyu,kitti,diode_outdoor}.yaml``)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import DatasetFormatError
from .common import DEPTH_DEFAULTS, collate_depth
from .diode import DIODE_LAYOUT, DiodeDataset
from .kitti import KITTI_LAYOUT, KITTIDepthDataset
from .nyu import NYU_LAYOUT, NYUDepthDataset

__all__ = ["DATA_LAYOUTS", "DepthDataModule", "warn_max_depth_mismatch"]

#: The on-disk layout each data set's config expects, quoted by the errors so a wrong ``paths.data_dir`` is
#: diagnosed from the message alone.
DATA_LAYOUTS: dict[str, str] = {
    "nyu": NYU_LAYOUT,
    "kitti": KITTI_LAYOUT,
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
        dataset: ``"nyu"`` | ``"kitti"`` (split files) or ``"diode"`` (``train_root``/``val_root`` e.g.
            ``DIODE/train/outdoor``, ``DIODE/val/outdoor``).
        train_root, val_root: root of the RGB paths (split files) or the DIODE folder.
        train_gt_root, val_gt_root: root of the depth paths of the split files (``None``: the RGB root).
        train_split, val_split: the split files (NYU, KITTI; unused for DIODE).
        input_size, keep_aspect, multiple_of, resize_method, interpolation: the image's network input size and
            resampling (:func:`~onelora.data.depth.common.input_hw`; defaults: ZoeDepth's, the paper's recipe);
            :func:`~onelora.data.depth.common.network_input_size` gives it from the config.
        min_depth, max_depth: validity range of the masks (``max_depth=None``: the data set's default).
        rotate_degrees, hflip_p, color_aug_p: training augmentation; ``kb_crop`` (KITTI), ``use_depth_mask`` and
            ``short_side`` (DIODE) as in the data sets.
        batch_size: training batch size (the ground truth stays at its resolution: one size per data set);
            ``eval_batch_size``: validation batch size (default 1).
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
        resize_method: Literal["minimal", "lower_bound"] = "minimal",
        interpolation: Literal["bilinear", "bicubic"] = "bilinear",
        min_depth: float = 1e-3,
        max_depth: float | None = None,
        rotate_degrees: float = 1.0,
        hflip_p: float = 0.5,
        color_aug_p: float = 0.5,
        kb_crop: bool | None = None,
        use_depth_mask: bool = False,
        short_side: int | None = None,
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
        self.image_options: dict[str, Any] = {
            "input_size": list(input_size) if isinstance(input_size, Sequence) else input_size,
            "keep_aspect": keep_aspect,
            "multiple_of": multiple_of,
            "resize_method": resize_method,
            "interpolation": interpolation,
        }
        self.min_depth = min_depth
        self.max_depth = float(DEPTH_DEFAULTS[dataset]["max_depth"] if max_depth is None else max_depth)
        self.augment = {"rotate_degrees": rotate_degrees, "hflip_p": hflip_p, "color_aug_p": color_aug_p}
        self.kb_crop, self.use_depth_mask, self.short_side = kb_crop, use_depth_mask, short_side
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.seed = num_workers, seed
        self.subsets = {"train": train_subset, "val": val_subset}
        self.check_files = check_files
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def _build(self, split: Literal["train", "val"]) -> Dataset:
        root, gt_root, split_file = self.roots[split]
        common: dict[str, Any] = {
            "train": split == "train",
            **self.image_options,
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
            **self.augment,
        }
        hint = f"; {DATA_LAYOUTS[self.dataset]}; set paths.data_dir= (or data.root=) to where the data set lies"
        if self.dataset == "diode":
            if not Path(root).is_dir():
                raise DatasetFormatError(f"DIODE {split} folder not found: {root}{hint}")
            ds: Dataset = DiodeDataset(root, use_depth_mask=self.use_depth_mask, short_side=self.short_side, **common)
        else:
            if not Path(split_file).is_file():  # type: ignore[arg-type]
                raise DatasetFormatError(f"{self.dataset} {split} split file not found: {split_file}{hint}")
            reader = NYUDepthDataset if self.dataset == "nyu" else KITTIDepthDataset
            ds = reader(root, gt_root, split_file, kb_crop=self.kb_crop, check_files=self.check_files, **common)  # type: ignore[arg-type]
        n = self.subsets[split]
        return ds if n is None else Subset(ds, range(min(int(n), len(ds))))  # type: ignore[arg-type]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._build("train")
        if self.val_set is None:
            self.val_set = self._build("val")

    def train_dataloader(self) -> DataLoader:
        from ..classification import seeded_loader

        loader = seeded_loader(self.train_set, self.batch_size, self.seed, self.num_workers, self.trainer)
        loader.collate_fn = collate_depth  # ground truths of one size per batch, or one clear error
        return loader

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_depth,
        )
