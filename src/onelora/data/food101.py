"""Food-101 in its on-disk layout, ADM preprocessing, and an optional VAE latent cache.

Layout (the `food-101/` folder of the official archive; `data_dir` points at it):

    images/<class>/<id>.jpg      meta/classes.txt   (one class name per line, the label order)
                                 meta/train.txt     (`<class>/<id>` per line, no extension; 750 per class)
                                 meta/test.txt      (250 per class)

Training images get the ADM/DiT preprocessing: `center_crop_arr` (halve with a BOX filter while the short
side is at least twice the target, BICUBIC resize of the short side to the target, centre crop), a random
horizontal flip, and scaling to [-1, 1]. Test images (the FID reference) get the same crop, no flip.

Batches are dicts: `{"image": (B, 3, S, S) in [-1, 1], "label": (B,)}`, or with `cache_latents=true`
`{"moments": (B, 2·C, s, s), "label": (B,)}`: the VAE posterior's mean and log-variance, encoded once for
the image and for its mirror image (the flip stays an exact image flip), so the task samples a fresh latent
from the cached posterior each step, as it would from the image, without running the encoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .classification import seeded_loader
from .errors import DatasetFormatError

log = logging.getLogger("onelora")

LAYOUT = "expected Food-101's layout: images/<class>/<id>.jpg, meta/classes.txt, meta/train.txt, meta/test.txt"


def center_crop_arr(image: Image.Image, image_size: int) -> Image.Image:
    """ADM's centre crop (guided-diffusion, used by DiT): BOX halvings, BICUBIC resize, centre crop."""
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])


def to_tensor(image: Image.Image) -> Tensor:
    """uint8 HWC RGB -> float CHW in [-1, 1] (Normalize(0.5, 0.5) of ToTensor)."""
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr.float().div(127.5).sub(1.0)


def read_food101(
    data_dir: str | Path, split: str, classes: int | None = None, per_class: int | None = None
) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and (image path, label) pairs of a split; checks the layout and that every listed image exists.

    classes: keep the first k classes of meta/classes.txt; per_class: keep the first n images of each class.
    """
    root = Path(data_dir)
    meta = root / "meta"
    if not meta.is_dir():
        raise DatasetFormatError(
            f"Food-101 not found: {meta} is missing; {LAYOUT} (set paths.data_dir= or data.module.data_dir=)"
        )
    names_file, split_file = meta / "classes.txt", meta / f"{split}.txt"
    for f in (names_file, split_file):
        if not f.is_file():
            raise DatasetFormatError(f"Food-101: {f} is missing; {LAYOUT}")
    names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    if classes is not None:
        if classes > len(names):
            raise DatasetFormatError(
                f"Food-101: {names_file} lists {len(names)} classes, data.module.classes={classes}"
            )
        names = names[:classes]
    index = {n: i for i, n in enumerate(names)}
    all_names = set(line.strip() for line in names_file.read_text().splitlines() if line.strip())
    items: list[tuple[Path, int]] = []
    counts: dict[str, int] = {}
    for line_no, raw in enumerate(split_file.read_text().splitlines(), start=1):
        entry = raw.strip()
        if not entry:
            continue
        cls, _, _ = entry.partition("/")
        if cls not in all_names:
            raise DatasetFormatError(f"{split_file}, line {line_no}: class {cls!r} of {entry!r} is not in {names_file}")
        if cls not in index or (per_class is not None and counts.get(cls, 0) >= per_class):
            continue
        counts[cls] = counts.get(cls, 0) + 1
        items.append((root / "images" / f"{entry}.jpg", index[cls]))
    missing_classes = [n for n in names if n not in counts]
    if missing_classes:
        raise DatasetFormatError(
            f"Food-101: {split_file} lists no image of class {missing_classes[0]!r} (from {names_file})"
        )
    for cls in counts:
        folder = root / "images" / cls
        if not folder.is_dir():
            raise DatasetFormatError(
                f"Food-101: class {cls!r} is listed in {split_file} but its folder {folder} is missing; {LAYOUT}"
            )
    missing = [p for p, _ in items if not p.is_file()]
    if missing:
        more = f" ({len(missing)} of the {len(items)} listed images are missing)" if len(missing) > 1 else ""
        raise DatasetFormatError(
            f"Food-101: {missing[0]}, listed in {split_file}, is missing{more}; "
            "re-extract the archive or fix data.module.data_dir"
        )
    return names, items


class Food101Images(Dataset):
    """(ADM centre crop, optional random flip, [-1, 1]) images with labels, as dicts."""

    def __init__(self, items: Sequence[tuple[Path, int]], image_size: int, flip: bool) -> None:
        self.items, self.image_size, self.flip = list(items), image_size, flip

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> Image.Image:
        path = self.items[i][0]
        try:
            with Image.open(path) as img:
                return center_crop_arr(img.convert("RGB"), self.image_size)
        except OSError as e:
            raise DatasetFormatError(f"Food-101: cannot read {path}: {e}") from e

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.load(i)
        if self.flip and torch.rand(()) < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return {"image": to_tensor(image), "label": self.items[i][1]}


class CachedLatents(Dataset):
    """VAE posterior moments cached per image and per mirror image; picks one at random when flipping."""

    def __init__(self, moments: Tensor, labels: Tensor, flip: bool) -> None:
        self.moments, self.labels, self.flip = moments, labels, flip  # moments: (N, 2 or 1, 2C, s, s)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = int(torch.randint(self.moments.shape[1], ())) if self.flip else 0
        return {"moments": self.moments[i, k].float(), "label": int(self.labels[i])}


class Food101DataModule(L.LightningDataModule):
    """Food-101 train (ADM crop + flip) and test (ADM crop; the FID reference) loaders.

    num_classes: must equal the classes used (101, or `classes`).
    classes / train_per_class / val_per_class: class-balanced subsets (smoke runs, a cheaper FID reference).
    cache_latents: encode the training set once with `vae` (a model spec, as `configs/model/*.yaml: vae`) into
        `<cache_dir>/food101_latents/<key>.pt` and train from it; the key covers files, size and VAE.
    """

    def __init__(
        self,
        data_dir: str,
        num_classes: int = 101,
        image_size: int = 256,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        seed: int = 0,
        hflip: bool = True,
        classes: int | None = None,
        train_per_class: int | None = None,
        val_per_class: int | None = None,
        cache_latents: bool = False,
        cache_dir: str | None = None,
        cache_batch_size: int = 64,
        vae: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.data_dir, self.num_classes, self.image_size = data_dir, num_classes, image_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed, self.hflip = num_workers, seed, hflip
        self.classes, self.train_per_class, self.val_per_class = classes, train_per_class, val_per_class
        self.cache_latents, self.cache_dir, self.cache_batch_size = cache_latents, cache_dir, cache_batch_size
        self.vae_spec = dict(vae) if vae is not None else None
        self.class_names: list[str] = []
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.cache_seconds: float | None = None  # time spent encoding the cache (None: not encoded in this process)

    # --- splits -------------------------------------------------------------------------------
    def _split(self, split: str, per_class: int | None) -> list[tuple[Path, int]]:
        names, items = read_food101(self.data_dir, split, self.classes, per_class)
        if len(names) != self.num_classes:
            raise DatasetFormatError(
                f"Food-101 in {self.data_dir} gives {len(names)} classes but data.num_classes={self.num_classes}; "
                "set data.num_classes= (and data.module.classes= for a subset) to agree"
            )
        self.class_names = names
        return items

    def setup(self, stage: str | None = None) -> None:
        train = self._split("train", self.train_per_class)
        self.val_set = Food101Images(self._split("test", self.val_per_class), self.image_size, flip=False)
        if self.cache_latents:
            data = torch.load(self.cache_path(train), map_location="cpu", weights_only=True)
            self.train_set = CachedLatents(data["moments"], data["labels"], flip=self.hflip)
        else:
            self.train_set = Food101Images(train, self.image_size, flip=self.hflip)

    def train_dataloader(self) -> DataLoader:
        return seeded_loader(self.train_set, self.batch_size, self.seed, self.num_workers, self.trainer)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.eval_batch_size, num_workers=self.num_workers)

    # --- the latent cache ---------------------------------------------------------------------
    def cache_path(self, items: Sequence[tuple[Path, int]]) -> Path:
        if self.cache_dir is None or self.vae_spec is None:
            raise DatasetFormatError("data.module.cache_latents=true needs data.module.cache_dir and data.module.vae")
        digest = hashlib.sha256()
        digest.update(json.dumps([self.image_size, self.hflip, self.vae_spec], sort_keys=True, default=str).encode())
        for path, label in items:
            digest.update(f"{path}\t{label}\n".encode())
        return Path(self.cache_dir) / "food101_latents" / f"{digest.hexdigest()[:16]}.pt"

    def prepare_data(self) -> None:
        """With `cache_latents`: encode the training set once (local rank 0; other ranks wait in setup)."""
        if not self.cache_latents:
            return
        items = self._split("train", self.train_per_class)
        path = self.cache_path(items)
        if path.is_file():
            return
        device, precision = torch.device("cpu"), nullcontext()
        if self.trainer is not None:  # the VAE runs on the run's device, in its precision, as in training
            device, precision = self.trainer.strategy.root_device, self.trainer.precision_plugin.forward_context()
        t0 = time.perf_counter()
        with precision:
            moments, labels = encode_latent_moments(
                self.vae_spec, Food101Images(items, self.image_size, flip=False), self.hflip, device,
                self.cache_batch_size, self.num_workers,
            )  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"moments": moments, "labels": labels}, tmp)
        os.replace(tmp, path)
        self.cache_seconds = time.perf_counter() - t0
        log.info("cached %d latents in %.1fs: %s", len(labels), self.cache_seconds, path)


@torch.no_grad()
def encode_latent_moments(
    vae_spec: Mapping[str, Any],
    images: Food101Images,
    flips: bool,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """VAE posterior (mean, logvar) of every image (and its mirror image if `flips`): fp16 (N, 1|2, 2C, s, s)."""
    from ..models import build_model

    vae = build_model(vae_spec).to(device).eval().requires_grad_(False)
    out, labels = [], []
    for batch in DataLoader(images, batch_size=batch_size, num_workers=num_workers):
        x = batch["image"].to(device)
        views = [x, x.flip(-1)] if flips else [x]
        moments = [vae.encode(v).latent_dist.parameters for v in views]  # (B, 2C, s, s): mean and logvar
        out.append(torch.stack(moments, 1).half().cpu())
        labels.append(batch["label"])
    del vae
    return torch.cat(out), torch.cat(labels)
