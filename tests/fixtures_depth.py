"""Depth data fixtures in the real on-disk formats (NYU / KITTI split files with PNG depth, DIODE npy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

RGB = (128, 64, 200)


def write_rgb(path: Path, h: int, w: int, fmt: str, pixels: np.ndarray | None = None) -> None:
    """An RGB image file (constant colour `RGB` unless `pixels` (h, w, 3) uint8 is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        pixels = np.empty((h, w, 3), dtype=np.uint8)
        pixels[...] = RGB
    Image.fromarray(pixels).save(path, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))


def write_png16(path: Path, arr: np.ndarray) -> None:
    """A single-channel uint16 PNG (NYU: mm, KITTI: metres x 256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint16)).save(path)


def write_nyu(root: Path, n_train: int = 4, n_test: int = 2, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    """An NYU Depth v2 folder in ZoeDepth's layout, as `configs/data/nyu.yaml` expects under `root`:

    ``sync/<scene>/rgb_XXXXX.jpg`` + ``sync_depth_XXXXX.png`` (train, uint16 mm), the same under
    ``official_splits/test/``, and ``train_test_inputs/nyudepthv2_{train,test}_files_with_gt.txt``.
    Depth grows from 1 m (top) to 9 m (bottom) with the image darker where it is far, plus noise; a few
    pixels are invalid (0).
    """
    rng = np.random.default_rng(seed)
    rows = np.linspace(1.0, 9.0, h, dtype=np.float32)[:, None].repeat(w, axis=1)
    splits = root / "train_test_inputs"
    splits.mkdir(parents=True, exist_ok=True)
    for split, n, folder, lead in (("train", n_train, "sync", "/"), ("test", n_test, "official_splits/test", "")):
        lines = []
        for i in range(n):
            scene = ["kitchen_0028b", "bathroom", "bedroom_0004", "office_0003"][i % 4]
            depth = rows * rng.uniform(0.8, 1.1) + rng.normal(0.0, 0.05, (h, w)).astype(np.float32)
            depth_mm = (depth.clip(0.1, 9.9) * 1000).astype(np.uint16)
            depth_mm[0, :3] = 0  # no measurement
            shade = (255 * (1.0 - depth / 10.0)).clip(0, 255).astype(np.uint8)
            pixels = np.stack([shade, shade // 2, 255 - shade], axis=-1)
            write_rgb(root / folder / scene / f"rgb_{i:05d}.jpg", h, w, "JPEG", pixels)
            write_png16(root / folder / scene / f"sync_depth_{i:05d}.png", depth_mm)
            lines.append(f"{lead}{scene}/rgb_{i:05d}.jpg {lead}{scene}/sync_depth_{i:05d}.png 518.8579")
        (splits / f"nyudepthv2_{split}_files_with_gt.txt").write_text("\n".join(lines) + "\n")
    return root


def write_kitti(data_dir: Path, n: int = 2, seed: int = 0) -> Path:
    """KITTI in the layout `configs/data/kitti.yaml` expects under `data_dir` (375x1242 frames, sparse uint16 depth).

    ``kitti/raw_data/<date>/<drive>/image_02/data/*.png``, ``kitti/data_depth_annotated/<drive>/proj_depth/
    groundtruth/image_02/*.png`` (metres x 256, 0 = none), and ``train_test_inputs/kitti_eigen_{train,test}_files_
    with_gt.txt``; the test split also has a line without ground truth (``None``).
    """
    rng = np.random.default_rng(seed)
    date, drive = "2011_09_26", "2011_09_26_drive_0002_sync"
    splits = data_dir / "train_test_inputs"
    splits.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        lines = []
        for i in range(n):
            frame = f"{i + (0 if split == 'train' else 100):010d}.png"
            rgb, gt = f"{date}/{drive}/image_02/data/{frame}", f"{drive}/proj_depth/groundtruth/image_02/{frame}"
            pixels = rng.integers(0, 255, (375, 1242, 3), np.uint8)
            write_rgb(data_dir / "kitti" / "raw_data" / rgb, 375, 1242, "PNG", pixels)
            depth = np.zeros((375, 1242), dtype=np.uint16)
            rows, cols = rng.integers(150, 375, 4000), rng.integers(0, 1242, 4000)  # lidar-like: sparse, lower part
            depth[rows, cols] = (rng.uniform(2.0, 79.0, 4000) * 256).astype(np.uint16)
            write_png16(data_dir / "kitti" / "data_depth_annotated" / gt, depth)
            lines.append(f"{rgb} {gt} 721.5377")
        if split == "test":
            lines.append(f"{date}/{drive}/image_02/data/0000000999.png None 721.5377")
        (splits / f"kitti_eigen_{split}_files_with_gt.txt").write_text("\n".join(lines) + "\n")
    return data_dir


def write_diode(data_dir: Path, n: int = 2, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    """DIODE outdoor in the layout `configs/data/diode_outdoor.yaml` expects: ``diode/{train,val}/outdoor/<scene>/
    <scan>/<name>.png`` with ``<name>_depth.npy`` (H x W x 1 float32 metres) and ``<name>_depth_mask.npy``."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for i in range(n):
            scan = data_dir / "diode" / split / "outdoor" / f"scene_{i:05d}" / f"scan_{i:05d}"
            name = f"{i:05d}_{i:05d}_outdoor_000_000"
            write_rgb(scan / f"{name}.png", h, w, "PNG", rng.integers(0, 255, (h, w, 3), np.uint8))
            depth = rng.uniform(3.0, 70.0, (h, w, 1)).astype(np.float32)
            depth[: h // 4] = 0.0  # sky: no measurement
            np.save(scan / f"{name}_depth.npy", depth)
            np.save(scan / f"{name}_depth_mask.npy", (depth[..., 0] > 0).astype(np.float32))
    return data_dir
