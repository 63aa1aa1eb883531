"""Tiny synthetic data sets in the real on-disk formats, for the smoke experiments and the tests.

Each is written deterministically (fixed seeds) by a `write_*` function. A data config that names one
(`synthetic: {builder: nyu, root: ...}`) gets it built on first use by `ensure_synthetic` (train.py calls it
before the data checks), like the quickstart's digits cache: one line says where it went. A folder that
already exists is never touched.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .movies import write_instructions, write_ratings

RGB = (128, 64, 200)
FOOD_CLASSES = ["apple_pie", "beignets", "ramen"]
TOKENIZER_SPECIALS = ["<unk>", "<s>", "</s>"]


# --- image files -----------------------------------------------------------------------------------
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


# --- depth: NYU, KITTI, DIODE ------------------------------------------------------------------------
def write_nyu(root: Path, n_train: int = 4, n_test: int = 2, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    """An NYU Depth v2 folder in ZoeDepth's layout, as `configs/data/nyu.yaml` expects under `root`:

    ``sync/<scene>/rgb_XXXXX.jpg`` + ``sync_depth_XXXXX.png`` (train, uint16 mm), the same under
    ``official_splits/test/``, and ``train_test_inputs/nyudepthv2_{train,test}_files_with_gt.txt``.
    Depth grows from 1 m (top) to 9 m (bottom) with the image darker where it is far, plus noise; a few
    pixels are invalid (0).
    """
    root = Path(root)
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
    data_dir = Path(data_dir)
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
    data_dir = Path(data_dir)
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


# --- classification: CIFAR-10 ------------------------------------------------------------------------
def write_cifar10(root: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    """A CIFAR-10 'python version' folder: 5 train pickles, test_batch, batches.meta (uint8 rows, CHW)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict[str, Any]:
        labels = rng.integers(0, 10, n)
        # class-dependent mean colour, so a model can learn something in a few steps
        data = rng.integers(0, 64, (n, 3, 32, 32)) + (labels[:, None, None, None] * 19)
        return {"data": data.clip(0, 255).astype(np.uint8).reshape(n, 3072), "labels": labels.tolist()}

    per = n_train // 5
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return root


# --- generation: Food-101 ----------------------------------------------------------------------------
def write_food101(root: Path, n_train: int = 4, n_test: int = 2, seed: int = 0) -> Path:
    """A Food-101 folder (images/<class>/<id>.jpg, meta/{classes,train,test}.txt) of tiny class-coloured JPEGs."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "food-101"
    (folder / "meta").mkdir(parents=True, exist_ok=True)
    (folder / "meta" / "classes.txt").write_text("\n".join(FOOD_CLASSES) + "\n")
    lines: dict[str, list[str]] = {"train": [], "test": []}
    ident = 1000
    for c, name in enumerate(FOOD_CLASSES):
        (folder / "images" / name).mkdir(parents=True, exist_ok=True)
        for split, n in (("train", n_train), ("test", n_test)):
            for _ in range(n):
                ident += 1
                h, w = (70, 40) if ident % 3 == 0 else (20, 26)  # portrait, and one that takes a BOX halving
                base = np.array([60 + 80 * c, 200 - 60 * c, 120], dtype=np.int64)
                arr = (base + rng.integers(-30, 30, (h, w, 3))).clip(0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / "images" / name / f"{ident}.jpg", quality=90)
                lines[split].append(f"{name}/{ident}")
    for split, entries in lines.items():
        (folder / "meta" / f"{split}.txt").write_text("\n".join(entries) + "\n")
    return folder


# --- math: MetaMathQA and a tokenizer ----------------------------------------------------------------
def metamath_records(n: int = 40) -> list[dict[str, str]]:
    """MetaMathQA-format records: single- and multi-line queries, responses ending "The answer is: X"."""
    out = []
    for i in range(n):
        a, b = 3 + i, 7 + 2 * i
        query = f"What is {a} plus {b}?" if i % 3 else f"Add the two numbers.\n{a} and {b}"
        response = f"We add {a} and {b} to get {a + b}.\nThe answer is: {a + b}"
        out.append({"query": query, "response": response, "type": "GSM_Rephrased", "original_question": query})
    return out


def make_tokenizer(path: Path, eos: bool = True, vocab_size: int = 128) -> Any:
    """A BPE tokenizer trained on the records' text (sentencepiece-like: Metaspace, BOS prepended), saved to path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from .metamath import format_prompt

    text = [format_prompt(r["query"]) + r["response"] for r in metamath_records()] + [format_prompt("a\nb")]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = TOKENIZER_SPECIALS if eos else TOKENIZER_SPECIALS[:2]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(text, trainer)  # show_progress: its bar printed 3 blank lines off a terminal
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    kwargs = {"eos_token": "</s>"} if eos else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>", **kwargs)
    fast.save_pretrained(path)
    return fast


def write_metamath(folder: Path, records: list[dict[str, Any]] | None = None) -> Path:
    """`<folder>/MetaMathQA-395K.json` (the records) and `<folder>/tokenizer/` (trained on them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make_tokenizer(folder / "tokenizer")
    (folder / "MetaMathQA-395K.json").write_text(json.dumps(metamath_records() if records is None else records))
    return folder


# --- building on first use ---------------------------------------------------------------------------
BUILDERS: dict[str, Callable[[Path], Any]] = {
    "nyu": write_nyu,
    "kitti": write_kitti,
    "diode": write_diode,
    "cifar10": write_cifar10,
    "food101": write_food101,
    "metamath": write_metamath,
    "movie_sentences": write_ratings,  # real sentences (onelora.data.movies), fetched on first use
    "movie_instructions": write_instructions,
}
REAL = {"movie_sentences", "movie_instructions"}


def ensure_synthetic(data_cfg: Any) -> Path | None:
    """Build the data config's synthetic set (`synthetic: {builder, root}`) if its folder does not exist yet.

    Written into a temporary sibling folder and renamed, so an interrupted build leaves nothing half-made."""
    spec = data_cfg.get("synthetic") if hasattr(data_cfg, "get") else None
    if not spec:
        return None
    builder, root = str(spec["builder"]), Path(str(spec["root"]))
    if builder not in BUILDERS:
        raise ValueError(f"unknown synthetic data set {builder!r}; known: {', '.join(BUILDERS)}")
    if root.exists():
        return root
    tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        BUILDERS[builder](tmp)
    except OSError as e:  # a read-only or missing data folder: one line, not a traceback
        from ..errors import DatasetFormatError

        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetFormatError(
            f"cannot write the synthetic {builder} data set to {root} ({e.strerror or e}); "
            "give a writable folder with paths.data_dir="
        ) from None
    except BaseException:  # a builder's own error (a real data set that cannot be fetched): nothing half-made left
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, root)
    except OSError:  # another process made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    if builder in REAL:
        print(f"{builder} data set ({data_cfg.get('name', builder)}) written to {root}")
    else:
        print(f"synthetic {builder} data set (deterministic, {data_cfg.get('name', builder)}) written to {root}")
    return root
