"""FSDP2 (trainer=fsdp2) trains on 2 CPU processes (gloo) as one process does with the same global batch.

Real subprocesses, fp32: the trained tensors, the validation metrics and the exported (merged) model equal one
process's; a run resumed from its step-1 checkpoint (mid-epoch) ends as the uninterrupted 2-process run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, hydra_cfg
from safetensors.torch import load_file

from onelora.run.train import train

# global batch 4 = micro 1 x 4 accumulated on one process = micro 1 x 2 processes x 2 accumulated; 2 optimizer
# steps per epoch either way (8 micro-batches on one process, 4 on each of two); a checkpoint at every step
COMMON = ("experiment=smoke_math", "trainer.precision=32-true", "data.module.batch_size=1",
          "trainer.accumulate_grad_batches=1", "callbacks.checkpoint.every_n_train_steps=1",
          "callbacks.checkpoint.save_top_k=-1")  # fmt: skip
FSDP2 = ("trainer=fsdp2", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.limit_train_batches=4")


def _fsdp2(tmp: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    paths = [f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={run}", f"paths.output_dir={run}"]
    args = [*COMMON, *FSDP2, *extra, *paths]
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)  # fmt: skip


def _trained(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.allclose(a[k], b[k], rtol=0, atol=atol), k


# LoRA (dropout off) equals one process through step 2 (2e-9), then departs from the first step of epoch 2 on
# (1e-4 against moves of 1e-2), with or without validation in between; DDP stays within 7e-7 on the same runs;
# the cause is not found yet
LORA_GAP = pytest.mark.xfail(strict=True, reason="FSDP2 LoRA departs from one process from epoch 2 on (open)")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["onelora", pytest.param("lora", marks=LORA_GAP), "bitfit"])
def test_fsdp2_on_two_cpu_processes_trains_as_one_process(method: str, tmp_path: Path) -> None:
    # MoRA's LoRA dropout (0.05 on math) draws its masks from each process's own RNG stream, which no single
    # process reproduces (as under DDP): off here, so the two runs see the same computation
    peft = [f"peft={method}", *(["peft.options.dropout=0"] if method == "lora" else [])]
    one = tmp_path / "one"
    with hydra_cfg(tmp_path, *COMMON, *peft, "trainer.limit_train_batches=8", f"paths.output_dir={one}",
                   f"export_to={one / 'export'}") as cfg:  # fmt: skip
        single, _ = train(cfg)
    sharded = tmp_path / "fsdp2"
    proc = _fsdp2(tmp_path, sharded, *peft, f"export_to={sharded / 'export'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((sharded / "result.json").read_text())
    assert record["status"] == single["status"] == "ok" and record["exported_to"] == str(sharded / "export")
    # the same 4 optimizer steps on the same samples: only the order of float sums differs (gloo's all-reduce)
    _same_tensors(_trained(one), _trained(sharded), atol=1e-6)
    assert record["metrics"]["val_loss"] == pytest.approx(single["metrics"]["val_loss"], rel=1e-6)
    _same_tensors(load_file(one / "export" / "model.safetensors"), load_file(sharded / "export" / "model.safetensors"),
                  atol=1e-6)  # fmt: skip
    if method != "onelora":
        return
    # exact resume: a fresh run folder holding only the step-1 checkpoint (mid-epoch) resumes there, and ends as the straight run
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy2(sharded / "checkpoints" / "epoch=0-step=1.ckpt", resumed / "checkpoints")
    (resumed / "checkpoints" / "last.ckpt").symlink_to("epoch=0-step=1.ckpt")
    proc = _fsdp2(tmp_path, resumed, "peft=onelora")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {resumed / 'checkpoints' / 'epoch=0-step=1.ckpt'}" in proc.stderr + proc.stdout
    _same_tensors(_trained(sharded), _trained(resumed), atol=0)
    assert json.loads((resumed / "result.json").read_text())["metrics"] == record["metrics"]
