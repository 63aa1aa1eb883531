"""Image classification data: CIFAR-10/100 in their standard on-disk format, and scikit-learn digits.

CIFAR is read from `<data_dir>/cifar-10-batches-py/` (or `cifar-100-python/`), the
python-pickle layout torchvision downloads; the paper's recipe: RandomResizedCrop to the
model's input size and a random horizontal flip for training, resize for validation on
the test split. The digits set ships with scikit-learn (8x8 grey images), so the
quickstart needs no download; `classes` picks a subset (relabelled 0..n-1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

from .errors import DatasetFormatError
from .loaders import seeded_loader  # re-exported: the data modules import it from here

CIFAR_LAYOUT = {
    10: (
        "cifar-10-batches-py",
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"],
    ),
    100: ("cifar-100-python", ["train", "test", "meta"]),
}


def _cifar_class(num_classes: int) -> type[torchvision.datasets.CIFAR10]:
    base = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100

    class CIFARFiles(base):  # type: ignore[misc, valid-type]
        """torchvision's reader with the checksums dropped: a presence test (fixtures, re-packed mirrors)."""

        train_list = [[name, None] for name, _ in base.train_list]
        test_list = [[name, None] for name, _ in base.test_list]
        meta = {**base.meta, "md5": None}

    return CIFARFiles


def check_cifar(data_dir: str | Path, num_classes: int) -> None:
    folder, files = CIFAR_LAYOUT[num_classes]
    missing = [f for f in files if not (Path(data_dir) / folder / f).is_file()]
    if missing:
        raise DatasetFormatError(
            f"CIFAR-{num_classes} not found: {Path(data_dir) / folder / missing[0]} is missing; expected the python "
            f"version's layout {folder}/{{{','.join(files)}}} under data.data_dir (set paths.data_dir= or data.data_dir=)"
        )


class ImageClassificationData(L.LightningDataModule):
    """Shared loaders for the classification data modules."""

    def __init__(
        self, batch_size: int, num_workers: int = 0, seed: int = 0, eval_batch_size: int | None = None
    ) -> None:
        super().__init__()
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.eval_batch_size = eval_batch_size or batch_size
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def train_dataloader(self) -> DataLoader:
        return seeded_loader(self.train_set, self.batch_size, self.seed, self.num_workers, self.trainer)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.eval_batch_size, num_workers=self.num_workers)


class CIFARDataModule(ImageClassificationData):
    def __init__(
        self,
        data_dir: str,
        num_classes: int = 10,
        image_size: int = 224,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        train_subset: int | None = None,
        val_subset: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if num_classes not in CIFAR_LAYOUT:
            raise ValueError(f"CIFAR has 10 or 100 classes, got {num_classes}")
        self.data_dir, self.num_classes = data_dir, num_classes
        self.train_subset, self.val_subset = train_subset, val_subset
        norm = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        self.train_tf = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(), *norm])
        self.val_tf = v2.Compose([v2.Resize(image_size, antialias=True), *norm])

    def setup(self, stage: str | None = None) -> None:
        check_cifar(self.data_dir, self.num_classes)
        cls = _cifar_class(self.num_classes)
        try:
            self.train_set = _subset(cls(self.data_dir, train=True, transform=self.train_tf), self.train_subset)
            self.val_set = _subset(cls(self.data_dir, train=False, transform=self.val_tf), self.val_subset)
        except Exception as e:  # a truncated or foreign pickle (torchvision reads every batch here): one line
            folder = Path(self.data_dir) / CIFAR_LAYOUT[self.num_classes][0]
            raise DatasetFormatError(
                f"CIFAR-{self.num_classes}: a batch file in {folder} cannot be read ({type(e).__name__}: {e}); "
                "re-extract the python version's archive there"
            ) from None


def _subset(ds: Dataset, n: int | None) -> Dataset:
    return ds if n is None else torch.utils.data.Subset(ds, range(min(n, len(ds))))


class DigitsDataModule(ImageClassificationData):
    """scikit-learn's 8x8 digits (1797 images), restricted to `classes`, split train/val by `val_fraction`.

    `holdout_fraction` carves a validation split out of the training part (stratified) and validates on it
    instead: for choosing hyper-parameters without ever looking at the `val_fraction` split (the test split)."""

    def __init__(
        self,
        classes: Sequence[int] = tuple(range(10)),
        val_fraction: float = 0.25,
        split_seed: int = 0,
        holdout_fraction: float | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.classes, self.val_fraction, self.split_seed = list(classes), val_fraction, split_seed
        self.holdout_fraction = holdout_fraction

    def setup(self, stage: str | None = None) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        keep = np.isin(digits.target, self.classes)
        images = torch.tensor(digits.images[keep] / 16.0, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
        images = (images - 0.5) / 0.5
        relabel = {c: i for i, c in enumerate(self.classes)}
        labels = torch.tensor([relabel[int(t)] for t in digits.target[keep]])
        tr, va = train_test_split(
            np.arange(len(labels)), test_size=self.val_fraction, random_state=self.split_seed, stratify=labels.numpy()
        )
        if self.holdout_fraction:  # the test split `va` is set aside untouched
            tr, va = train_test_split(tr, test_size=self.holdout_fraction, random_state=self.split_seed,
                                      stratify=labels[tr].numpy())  # fmt: skip
        self.train_set = TensorDataset(images[tr], labels[tr])
        self.val_set = TensorDataset(images[va], labels[va])
