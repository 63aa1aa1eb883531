"""Depth datasets read fixtures written here in the real NYU / KITTI / DIODE on-disk formats."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_depth import RGB
from fixtures_depth import write_png16 as _write_png16
from fixtures_depth import write_rgb as _write_rgb
from PIL import Image
from torch.utils.data import default_collate

from onelora.data.depth import IMAGENET_MEAN, IMAGENET_STD, DiodeDataset, SplitFileDepthDataset, input_hw
from onelora.data.errors import DatasetFormatError


def _normalised(rgb: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor([(c / 255 - m) / s for c, m, s in zip(rgb, IMAGENET_MEAN, IMAGENET_STD)])


# ---------------------------------------------------------------------------------------------------------------
# fixtures in the real formats
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def nyu(tmp_path: Path) -> Path:
    """NYU train-style split: '/scene/rgb_XXXXX.jpg /scene/sync_depth_XXXXX.png focal', depth PNG in mm."""
    root = tmp_path / "nyu"
    lines = []
    for i, scene in enumerate(["kitchen_0028b", "bathroom"]):
        _write_rgb(root / scene / f"rgb_0004{i}.jpg", 48, 64, "JPEG")
        depth_mm = np.zeros((48, 64), dtype=np.uint16)
        depth_mm[:, :32] = 1500  # 1.5 m on the left half
        depth_mm[:, 32:] = 3000  # 3.0 m on the right half
        depth_mm[0, 0] = 0  # invalid
        depth_mm[0, 1] = 12000  # 12 m > max_depth 10: invalid
        _write_png16(root / scene / f"sync_depth_0004{i}.png", depth_mm)
        lines.append(f"/{scene}/rgb_0004{i}.jpg /{scene}/sync_depth_0004{i}.png 518.8579")
    (root / "nyu_train.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def kitti(tmp_path: Path) -> Path:
    """KITTI Eigen-style split with a 'None' line; 375x1242 RGB PNG and uint16 depth PNG = metres x 256."""
    raw, gt = tmp_path / "raw_data", tmp_path / "data_depth_annotated"
    drive = "2011_09_26_drive_0002_sync"
    rgb_rel = f"2011_09_26/{drive}/image_02/data/0000000069.png"
    gt_rel = f"{drive}/proj_depth/groundtruth/image_02/0000000069.png"
    _write_rgb(raw / rgb_rel, 375, 1242, "PNG")
    depth = np.zeros((375, 1242), dtype=np.uint16)  # 0 = no measurement
    depth[23 + 5, 13 + 7] = 20 * 256  # KB crop: top = 375 - 352 = 23, left = (1242 - 1216) // 2 = 13
    depth[23 + 6, 13 + 7] = 100 * 256  # 100 m > 80: invalid
    depth[0, 0] = 10 * 256  # outside the KB crop
    depth[374, 1241] = 256 + 128  # 1.5 m, outside the KB crop (right margin)
    _write_png16(gt / gt_rel, depth)
    lines = [
        f"{rgb_rel} {gt_rel} 721.5377",
        f"2011_09_26/{drive}/image_02/data/0000000070.png None 721.5377",
    ]
    (tmp_path / "kitti_eigen_test.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.fixture
def diode(tmp_path: Path) -> Path:
    """DIODE val/outdoor: <root>/scene/scan/<name>.png + <name>_depth.npy (H,W,1) + <name>_depth_mask.npy."""
    root = tmp_path / "DIODE" / "val" / "outdoor"
    scan = root / "scene_00022" / "scan_00193"
    name = "00022_00193_outdoor_000_000"
    _write_rgb(scan / f"{name}.png", 24, 32, "PNG")
    depth = np.full((24, 32, 1), 30.0, dtype=np.float32)
    depth[0, 0, 0] = 0.0  # invalid
    depth[0, 1, 0] = 120.0  # > 80: invalid
    np.save(scan / f"{name}_depth.npy", depth)
    mask = np.ones((24, 32), dtype=np.float32)
    mask[1, :] = 0.0
    np.save(scan / f"{name}_depth_mask.npy", mask)
    _write_rgb(scan / f"{name}_depth.png", 24, 32, "PNG")  # a visualisation file: must be ignored
    return root


# ---------------------------------------------------------------------------------------------------------------
# NYU
# ---------------------------------------------------------------------------------------------------------------


def test_input_hw_policy() -> None:
    assert input_hw(480, 640, 518) == (518, 686)  # short side 518 = 37*14, 690.7 -> 686
    assert input_hw(352, 1216, 518) == (518, 1792)
    assert input_hw(48, 64, 28) == (28, 42)  # 37.3 -> 42 (round 2.67 -> 3 multiples)
    assert input_hw(352, 1216, (384, 768)) == (392, 1330)  # 384 -> 378 < 384 -> ceil 392
    assert input_hw(352, 1216, (384, 768), keep_aspect=False) == (392, 770)
    assert input_hw(48, 64, None) == (48, 64)


def test_nyu_eval(nyu: Path) -> None:
    ds = SplitFileDepthDataset(nyu, nyu, nyu / "nyu_train.txt", "nyu", input_size=28)
    assert len(ds) == 2 and ds.num_skipped == 0
    s = ds[0]
    assert set(s) == {"image", "depth", "mask", "focal", "path"}
    assert s["image"].shape == (3, 28, 42) and s["image"].dtype == torch.float32
    # a constant-colour image stays that colour (JPEG +-1 level), ImageNet-normalised
    assert torch.allclose(s["image"].mean(dim=(1, 2)), _normalised(RGB), atol=0.03)
    # depth at the original GT resolution, mm / 1000
    assert s["depth"].shape == (48, 64) and s["depth"].dtype == torch.float32
    assert float(s["depth"][5, 5]) == pytest.approx(1.5) and float(s["depth"][5, 40]) == pytest.approx(3.0)
    assert float(s["depth"][0, 1]) == pytest.approx(12.0)
    assert s["mask"].dtype == torch.bool and not s["mask"][0, 0] and not s["mask"][0, 1]
    assert int(s["mask"].sum()) == 48 * 64 - 2
    assert s["focal"] == pytest.approx(518.8579)
    assert s["path"] == str(nyu / "kitchen_0028b" / "rgb_00040.jpg")
    batch = default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 28, 42) and batch["depth"].shape == (2, 48, 64)


def test_nyu_train_flip_and_resize(nyu: Path) -> None:
    torch.manual_seed(0)
    ds = SplitFileDepthDataset(
        nyu,
        None,
        nyu / "nyu_train.txt",
        "nyu",
        train=True,
        input_size=28,
        rotate_degrees=0,
        hflip_p=1.0,
        color_aug_p=0.0,
    )
    s = ds[0]
    assert s["image"].shape == (3, 28, 42)
    assert s["depth"].shape == (28, 42) and s["mask"].shape == (28, 42)  # nearest-resized to the input size
    # flipped: 3.0 m now on the left, 1.5 m on the right; nearest resize keeps only original values
    assert float(s["depth"][10, 0]) == pytest.approx(3.0) and float(s["depth"][10, -1]) == pytest.approx(1.5)
    assert set(s["depth"].unique().tolist()) <= {0.0, 1.5, 3.0, 12.0}
    assert torch.equal(s["mask"], (s["depth"] > 1e-3) & (s["depth"] < 10))


def test_nyu_train_full_augmentation_stays_in_range(nyu: Path) -> None:
    torch.manual_seed(0)
    ds = SplitFileDepthDataset(nyu, None, nyu / "nyu_train.txt", "nyu", train=True, input_size=28, color_aug_p=1.0)
    lo = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    hi = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for _ in range(3):
        s = ds[1]
        # colour jitter clips to [0, 1] before normalisation; bicubic may overshoot by a hair
        assert (s["image"].amin(dim=(1, 2)) >= lo - 0.05).all() and (s["image"].amax(dim=(1, 2)) <= hi + 0.05).all()
        assert not torch.allclose(s["image"].mean(dim=(1, 2)), _normalised(RGB), atol=1e-3)
        assert s["depth"].shape == (28, 42)


# ---------------------------------------------------------------------------------------------------------------
# KITTI
# ---------------------------------------------------------------------------------------------------------------


def test_kitti_eval_kb_crop_and_none_lines(kitti: Path) -> None:
    ds = SplitFileDepthDataset(
        kitti / "raw_data", kitti / "data_depth_annotated", kitti / "kitti_eigen_test.txt", "kitti", input_size=56
    )
    assert len(ds) == 1 and ds.num_skipped == 1  # the 'None' line
    s = ds[0]
    assert s["depth"].shape == (352, 1216)  # KB crop, original resolution
    assert s["image"].shape == (3, *input_hw(352, 1216, 56)) == (3, 56, 196)
    assert float(s["depth"][5, 7]) == pytest.approx(20.0)  # 5120 / 256
    assert float(s["depth"][6, 7]) == pytest.approx(100.0)
    assert s["mask"][5, 7] and not s["mask"][6, 7]  # 100 m > max_depth 80
    assert int(s["mask"].sum()) == 1  # zeros are invalid
    assert float(s["depth"].sum()) == pytest.approx(120.0)  # the two pixels outside the crop are gone
    assert s["focal"] == pytest.approx(721.5377)


def test_kitti_without_kb_crop(kitti: Path) -> None:
    ds = SplitFileDepthDataset(
        kitti / "raw_data",
        kitti / "data_depth_annotated",
        kitti / "kitti_eigen_test.txt",
        "kitti",
        input_size=None,
        kb_crop=False,
    )
    s = ds[0]
    assert s["depth"].shape == (375, 1242) and s["image"].shape == (3, 375, 1242)
    assert float(s["depth"][374, 1241]) == pytest.approx(1.5) and float(s["depth"][0, 0]) == pytest.approx(10.0)
    assert int(s["mask"].sum()) == 3


# ---------------------------------------------------------------------------------------------------------------
# DIODE
# ---------------------------------------------------------------------------------------------------------------


def test_diode(diode: Path) -> None:
    ds = DiodeDataset(diode, input_size=28)
    assert len(ds) == 1  # the _depth.png visualisation is ignored
    s = ds[0]
    assert s["image"].shape == (3, *input_hw(24, 32, 28)) == (3, 28, 42)
    assert s["depth"].shape == (24, 32) and float(s["depth"][5, 5]) == pytest.approx(30.0)
    # reference protocol: validity from the depth range only, the DIODE mask is not used
    assert int(s["mask"].sum()) == 24 * 32 - 2
    assert math.isnan(s["focal"]) and s["path"].endswith("00022_00193_outdoor_000_000.png")
    s = DiodeDataset(diode, input_size=28, use_depth_mask=True)[0]
    assert int(s["mask"].sum()) == 24 * 32 - 2 - 32  # row 1 masked out by _depth_mask.npy


# ---------------------------------------------------------------------------------------------------------------
# bad input: the message names the file and the expected layout
# ---------------------------------------------------------------------------------------------------------------


def test_missing_split_file(tmp_path: Path) -> None:
    assert issubclass(DatasetFormatError, ValueError)
    missing = tmp_path / "nope.txt"
    with pytest.raises(DatasetFormatError, match="split file not found") as exc:
        SplitFileDepthDataset(tmp_path, tmp_path, missing, "nyu")
    assert str(missing) in str(exc.value) and "<rgb_path> <depth_path> <focal>" in str(exc.value)


def test_malformed_split_line(tmp_path: Path) -> None:
    split = tmp_path / "split.txt"
    split.write_text("a.jpg b.png 518.8\nonly_two fields\n")
    with pytest.raises(DatasetFormatError, match="line 2") as exc:
        SplitFileDepthDataset(tmp_path, tmp_path, split, "nyu")
    assert str(split) in str(exc.value)
    split.write_text("a.jpg b.png focal\n")
    with pytest.raises(DatasetFormatError, match="not a number"):
        SplitFileDepthDataset(tmp_path, tmp_path, split, "nyu")
    split.write_text("a.jpg None 518.8\n")
    with pytest.raises(DatasetFormatError, match="no sample"):
        SplitFileDepthDataset(tmp_path, tmp_path, split, "kitti")


def test_missing_image(nyu: Path) -> None:
    (nyu / "bathroom" / "rgb_00041.jpg").unlink()
    ds = SplitFileDepthDataset(nyu, nyu, nyu / "nyu_train.txt", "nyu", input_size=28)
    with pytest.raises(DatasetFormatError, match="RGB image not found") as exc:
        ds[1]
    msg = str(exc.value)
    assert str(nyu / "bathroom" / "rgb_00041.jpg") in msg and "line 2" in msg and "nyu_train.txt" in msg
    with pytest.raises(DatasetFormatError, match="rgb_00041.jpg"):
        SplitFileDepthDataset(nyu, nyu, nyu / "nyu_train.txt", "nyu", check_files=True)


@pytest.mark.parametrize("kind", ["8bit", "rgb"])
def test_wrong_depth_png(nyu: Path, kind: str) -> None:
    bad = nyu / "kitchen_0028b" / "sync_depth_00040.png"
    if kind == "8bit":
        Image.fromarray(np.full((48, 64), 15, dtype=np.uint8)).save(bad)
    else:
        Image.fromarray(np.full((48, 64, 3), 15, dtype=np.uint8)).save(bad)
    ds = SplitFileDepthDataset(nyu, nyu, nyu / "nyu_train.txt", "nyu", input_size=28)
    with pytest.raises(DatasetFormatError, match="16-bit") as exc:
        ds[0]
    assert str(bad) in str(exc.value)
    ds[1]  # the other sample is fine


def test_image_depth_size_mismatch(nyu: Path) -> None:
    _write_png16(nyu / "kitchen_0028b" / "sync_depth_00040.png", np.ones((40, 64)))
    with pytest.raises(DatasetFormatError, match="sync_depth_00040.png"):
        SplitFileDepthDataset(nyu, nyu, nyu / "nyu_train.txt", "nyu", input_size=28)[0]


def test_diode_bad_input(diode: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="DIODE root not found"):
        DiodeDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetFormatError, match="no DIODE image") as exc:
        DiodeDataset(tmp_path / "empty")
    assert "_depth_mask.npy" in str(exc.value)  # the expected layout is spelled out
    name = diode / "scene_00022" / "scan_00193" / "00022_00193_outdoor_000_000"
    depth_file = Path(f"{name}_depth.npy")
    np.save(depth_file, np.zeros((24, 32, 3), dtype=np.float32))  # wrong shape
    with pytest.raises(DatasetFormatError, match="_depth.npy") as exc:
        DiodeDataset(diode, input_size=28)[0]
    assert "(24, 32, 1)" in str(exc.value)
    depth_file.unlink()
    with pytest.raises(DatasetFormatError, match="depth not found"):
        DiodeDataset(diode, input_size=28)[0]
