"""The quickstart's source model: the committed digits ViT (checksum, package data), a pinned re-make, the run's
CPU threads, and a damaged copy or cache told in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from helpers import ROOT, hydra_cfg
from omegaconf import OmegaConf

from onelora.assets import ROOT as ASSETS
from onelora.assets import sha256
from onelora.errors import ModelError, RunDirError
from onelora.models import build_model
from onelora.run.train import train

COMMITTED = ASSETS / "vit_digits_0-4"
TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
TINY_PRETRAIN = '+model.pretrain_overrides=["trainer.max_epochs=1","trainer.limit_train_batches=2"]'


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)  # fmt: skip


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "vit"
    shutil.copytree(COMMITTED, copy)
    return copy


def test_the_quickstart_fine_tunes_the_committed_model_whose_checksum_is_pinned(tmp_path: Path) -> None:
    spec = yaml_model()
    assert Path(spec.pretrained) == COMMITTED and (COMMITTED / "config.json").is_file()
    assert spec.sha256 == sha256(COMMITTED / "model.safetensors")  # hashlib over the committed file
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(COMMITTED.joinpath("model.safetensors").relative_to(ASSETS.parent).match(p) for p in
               package_data["onelora"])  # installs with the package  # fmt: skip
    with hydra_cfg(tmp_path, *TINY) as cfg:
        record, _ = train(cfg)
    assert record["status"] == "ok" and not (tmp_path / "cache").exists()  # nothing pre-trained on first use


def yaml_model():  # noqa: ANN201
    with hydra_cfg(Path("/nonexistent")) as cfg:
        return OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))


def test_the_run_uses_cpu_threads_and_gives_them_back(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    with hydra_cfg(tmp_path, *TINY, "cpu_threads=2") as cfg:
        assert cfg.cpu_threads == 2
        record, _ = train(cfg)
    assert record["cpu_threads"] == 2 and torch.get_num_threads() == before
    with hydra_cfg(tmp_path) as cfg:
        assert cfg.cpu_threads == 1  # python run.py: the quickstart's task pins one thread
    with hydra_cfg(tmp_path, "experiment=smoke_classification") as cfg:
        assert cfg.cpu_threads is None  # elsewhere: torch's default
    proc = _cli("cpu_threads=0", f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: cpu_threads=0 is not allowed; cpu_threads takes a whole number >= 1"
    ]


def test_a_remade_source_model_does_not_depend_on_the_command_that_triggers_it(tmp_path: Path) -> None:
    made = []
    for name, seed, threads in (("a", 1, 2), ("b", 0, 1)):
        root = tmp_path / name
        pretrained = f"model.pretrained={root / 'cache' / 'vit_digits_0-4'}"
        with hydra_cfg(root, *TINY, TINY_PRETRAIN, pretrained, "model.sha256=null", f"seed={seed}",
                       f"cpu_threads={threads}") as cfg:  # fmt: skip
            record, _ = train(cfg)
        pre = json.loads((root / "cache" / "vit_digits_0-4_run" / "result.json").read_text())
        assert record["status"] == pre["status"] == "ok" and record["seed"] == seed
        assert pre["seed"] == 0 and pre["cpu_threads"] == 1 and record["cpu_threads"] == threads
        made.append(sha256(root / "cache" / "vit_digits_0-4" / "model.safetensors"))
    assert made[0] == made[1]


def test_a_damaged_committed_model_is_one_line_naming_the_file(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    spec = yaml_model()
    spec.pretrained = str(copy)
    with pytest.raises(ModelError, match=f"{weights} does not match model.sha256 .*make source-model"):
        build_model(spec)
    spec.sha256 = None  # unchecked: safetensors' own error, in one line naming the folder
    with pytest.raises(ModelError) as e:
        build_model(spec)
    assert str(copy) in str(e.value) and "damaged" in str(e.value) and "\n" not in str(e.value)
    proc = _cli(f"model.pretrained={copy}", f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'r'}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "does not match model.sha256" in lines[0], proc.stderr


def test_a_folder_without_weights_says_how_to_remake_it(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    (copy / "model.safetensors").unlink()  # what a kill during the export leaves
    spec = yaml_model()
    spec.pretrained = str(copy)
    with pytest.raises(ModelError, match=f"{copy} holds no weights .*re-make it: make source-model"):
        build_model(spec)
    cache = tmp_path / "cache" / "vit_digits_0-4"  # in a cache folder, the pre-training is simply made again
    shutil.copytree(copy, cache)
    with hydra_cfg(tmp_path, *TINY, TINY_PRETRAIN, f"model.pretrained={cache}", "model.sha256=null") as cfg:
        record, _ = train(cfg)
    assert record["status"] == "ok" and (cache / "model.safetensors").is_file()


def test_an_unwritable_cache_names_paths_cache_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")  # a file where the cache folder should be (root ignores chmod)
    cache = tmp_path / "file" / "cache"
    overrides = [*TINY, f"paths.cache_dir={cache}", "model.pretrained=${paths.cache_dir}/vit_digits_0-4"]
    with hydra_cfg(tmp_path, *overrides) as cfg:
        with pytest.raises(RunDirError, match=f"cannot write the cache folder {cache} .*paths.cache_dir=") as e:
            train(cfg)
    assert "paths.log_dir" not in str(e.value)
