"""Depth datasets read fixtures written here in the real NYU / KITTI / DIODE on-disk formats."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from fixtures_depth import RGB
from fixtures_depth import write_png16 as _write_png16
from fixtures_depth import write_rgb as _write_rgb
from PIL import Image
from torch.utils.data import default_collate

from onelora.data.depth import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DepthSampleTransform,
    DiodeDataset,
    SplitFileDepthDataset,
    collate_depth,
    dataset_input_hw,
    input_hw,
    network_input_size,
)
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
    """Sizes ZoeDepth's ``Resize.get_size`` (depth_anything.py, ensure_multiple_of=14) gives for the same inputs."""
    # "minimal" (V1 / ZoeDepth, the default): each side to the nearest multiple of 14
    assert input_hw(480, 640, (392, 518), keep_aspect=False) == (392, 518)  # NYU
    assert input_hw(352, 1216, (384, 768), keep_aspect=False) == (378, 770)  # KITTI after the KB crop
    assert input_hw(768, 1024, (392, 518), keep_aspect=False) == (392, 518)  # DIODE
    assert input_hw(375, 1242, (384, 768), keep_aspect=False) == (378, 770)  # KITTI without the KB crop
    assert input_hw(352, 1216, (384, 768)) == (378, 1330)  # one scale: the one closer to 1
    assert input_hw(480, 640, 518) == (518, 686)
    # "lower_bound" (V2): never below the target
    assert input_hw(352, 1216, (384, 768), resize_method="lower_bound") == (392, 1330)
    assert input_hw(352, 1216, (384, 768), keep_aspect=False, resize_method="lower_bound") == (392, 770)
    assert input_hw(352, 1216, 518, resize_method="lower_bound") == (518, 1792)
    assert input_hw(48, 64, 28, resize_method="lower_bound") == (28, 42)  # 37.3 -> 42 (round 2.67 -> 3 multiples)
    assert input_hw(48, 64, None) == (48, 64)
    with pytest.raises(ValueError, match="resize_method"):
        input_hw(48, 64, 28, resize_method="upper")  # type: ignore[arg-type]


def test_image_resize_matches_zoedepth() -> None:
    """ZoeDepth resizes inside the model, bilinearly with align_corners=True; its Resize on this image (KITTI at
    img_size 384x768) gives 378x770, a sum of 436484.3125 and 1.1998862 at [:, 100, 200]."""
    x = torch.rand(3, 352, 1216, generator=torch.Generator().manual_seed(0))
    y = DepthSampleTransform(train=False, input_size=(384, 768), keep_aspect=False).resize(x)
    assert y.shape == (3, 378, 770)
    assert float(y.sum()) == pytest.approx(436484.3125, rel=1e-6)
    assert float(y[:, 100, 200].sum()) == pytest.approx(1.1998862, abs=1e-6)


def test_network_input_size_of_the_data_configs() -> None:
    assert network_input_size({"dataset": "nyu", "input_size": [392, 518], "keep_aspect": False}) == (392, 518)
    assert network_input_size({"dataset": "kitti", "input_size": [384, 768], "keep_aspect": False}) == (378, 770)
    assert network_input_size({"dataset": "diode", "input_size": [392, 518], "keep_aspect": False}) == (392, 518)
    kitti_v2 = {"dataset": "kitti", "input_size": [384, 768], "keep_aspect": False, "resize_method": "lower_bound"}
    assert network_input_size(kitti_v2) == dataset_input_hw("kitti", (384, 768), False, 14, "lower_bound") == (392, 770)
    assert network_input_size({"dataset": "kitti", "input_size": 518, "kb_crop": False}) == input_hw(375, 1242, 518)


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


def test_nyu_train_flip_keeps_ground_truth_resolution(nyu: Path) -> None:
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
    # the ground truth stays at its resolution (the loss upsamples the prediction to it, as ZoeDepth), flipped:
    # 3.0 m now on the left, 1.5 m on the right, the two invalid pixels in the top right corner
    assert s["depth"].shape == (48, 64) and s["mask"].shape == (48, 64)
    assert float(s["depth"][10, 0]) == pytest.approx(3.0) and float(s["depth"][10, -1]) == pytest.approx(1.5)
    assert float(s["depth"][0, -1]) == 0.0 and float(s["depth"][0, -2]) == pytest.approx(12.0)
    assert torch.equal(s["mask"], (s["depth"] > 1e-3) & (s["depth"] < 10)) and int(s["mask"].sum()) == 48 * 64 - 2


def test_nyu_train_full_augmentation_stays_in_range(nyu: Path) -> None:
    torch.manual_seed(0)
    ds = SplitFileDepthDataset(nyu, None, nyu / "nyu_train.txt", "nyu", train=True, input_size=28, color_aug_p=1.0)
    lo = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    hi = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for _ in range(3):
        s = ds[1]
        # colour jitter clips to [0, 1] before normalisation; bilinear resizing stays inside
        assert (s["image"].amin(dim=(1, 2)) >= lo - 1e-5).all() and (s["image"].amax(dim=(1, 2)) <= hi + 1e-5).all()
        assert not torch.allclose(s["image"].mean(dim=(1, 2)), _normalised(RGB), atol=1e-3)
        assert s["depth"].shape == (48, 64)


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


def test_kitti_training_keeps_every_lidar_point(tmp_path: Path) -> None:
    """ZoeDepth masks at the ground truth's resolution: all LiDAR points of a frame are supervised. Resizing the
    ground truth to the input with nearest neighbour (what the suite did, at 392x770) kept 70% of them here."""
    rng = np.random.default_rng(0)
    depth = np.zeros((375, 1242), dtype=np.uint16)
    rows, cols = rng.integers(120, 375, 24_000), rng.integers(0, 1242, 24_000)
    depth[rows, cols] = (rng.uniform(1.0, 85.0, 24_000) * 256).astype(np.uint16)  # a few beyond 80 m: invalid
    _write_png16(tmp_path / "gt" / "f.png", depth)
    _write_rgb(tmp_path / "rgb" / "f.png", 375, 1242, "PNG")
    (tmp_path / "split.txt").write_text("f.png f.png 721.5377\n")
    cropped = depth[23:, 13 : 13 + 1216].astype(np.float32) / 256  # the KB crop
    n_points = int(((cropped > 1e-3) & (cropped < 80)).sum())
    ds = SplitFileDepthDataset(
        tmp_path / "rgb", tmp_path / "gt", tmp_path / "split.txt", "kitti", train=True, input_size=(384, 768),
        keep_aspect=False, rotate_degrees=0, hflip_p=1.0, color_aug_p=0.0,
    )  # fmt: skip
    s = ds[0]
    assert s["image"].shape == (3, 378, 770) and s["depth"].shape == (352, 1216)
    assert int(s["mask"].sum()) == n_points == 21_263
    resized = TF.resize(torch.from_numpy(cropped)[None], [392, 770], interpolation=TF.InterpolationMode.NEAREST)[0]
    assert int(((resized > 1e-3) & (resized < 80)).sum()) == 14_956  # the old pipeline's supervision: 70%


def test_batches_need_one_ground_truth_size(nyu: Path) -> None:
    ds = SplitFileDepthDataset(nyu, nyu, nyu / "nyu_train.txt", "nyu", input_size=28)
    batch = collate_depth([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 28, 42) and batch["depth"].shape == (2, 48, 64)
    odd = dict(ds[1], depth=torch.ones(40, 64), mask=torch.ones(40, 64, dtype=torch.bool))
    with pytest.raises(DatasetFormatError, match="different sizes in one training batch") as exc:
        collate_depth([ds[0], odd])
    assert "48x64" in str(exc.value) and "40x64" in str(exc.value) and "rgb_00041.jpg" in str(exc.value)


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
    assert s["image"].shape == (3, *input_hw(24, 32, 28)) == (3, 28, 28)  # scale 0.875 (closer to 1): 21 -> 28
    assert s["depth"].shape == (24, 32) and float(s["depth"][5, 5]) == pytest.approx(30.0)
    # reference protocol: validity from the depth range only, the DIODE mask is not used
    assert int(s["mask"].sum()) == 24 * 32 - 2
    assert math.isnan(s["focal"]) and s["path"].endswith("00022_00193_outdoor_000_000.png")
    s = DiodeDataset(diode, input_size=28, use_depth_mask=True)[0]
    assert int(s["mask"].sum()) == 24 * 32 - 2 - 32  # row 1 masked out by _depth_mask.npy
    # ZoeDepth's DIODE loader resizes the image (only) to a short side of 480 first: here 16 -> 16 x int(21.3)
    s = DiodeDataset(diode, input_size=None, short_side=16)[0]
    assert s["image"].shape == (3, 16, 21) and s["depth"].shape == (24, 32)
    assert torch.allclose(s["image"].mean(dim=(1, 2)), _normalised(RGB), atol=1e-5)  # constant colour stays


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
