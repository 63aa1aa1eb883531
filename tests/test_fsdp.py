"""FSDP2 (trainer=fsdp2) trains on 2 CPU processes (gloo) as one process does with the same global batch.

Real subprocesses, fp32: the trained tensors, the validation metrics and the exported (merged) model equal one
process's; a run resumed from its step-1 checkpoint (mid-epoch) ends as the uninterrupted 2-process run. In one
process, over bf16 frozen weights: the config's FSDP2 units give one process's gradients bit for bit.
"""

from __future__ import annotations

import copy
import csv
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

from onelora.run.build import build_peft_model
from onelora.run.train import train

# global batch 4 = micro 1 x 4 accumulated on one process = micro 1 x 2 processes x 2 accumulated; 2 optimizer
# steps per epoch either way (8 micro-batches on one process, 4 on each of two); a checkpoint at every step. All
# fp32, the frozen weights too: over bf16 weights each layer's output is rounded to bf16, where the all-reduce's
# 1e-8 differences flip a few roundings (LoRA: 5e-6 in the validation loss, one bf16 step in a merged weight)
COMMON = ("experiment=smoke_math", "trainer.precision=32-true", "task.weights_dtype=float32", "data.module.batch_size=1",
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


@pytest.mark.slow
@pytest.mark.parametrize("method", ["onelora", "lora", "bitfit"])
def test_fsdp2_on_two_cpu_processes_trains_as_one_process(method: str, tmp_path: Path) -> None:
    # MoRA's LoRA dropout (0.05 on math) draws its masks from each process's own RNG stream, which no single
    # process reproduces (as under DDP): off here, so the two runs see the same computation
    peft = [f"peft={method}", *(["peft.options.dropout=0"] if method == "lora" else [])]
    if method == "bitfit":  # the gradient norm clipped (the norm over both processes' shards): 1e-3 bites every step
        peft.append("trainer.gradient_clip_val=1e-3")
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
    # the resumed epoch's training time: its part before the checkpoint (saved in it) and its part after
    ckpt = torch.load(resumed / "checkpoints" / "epoch=0-step=1.ckpt", map_location="cpu", weights_only=False)
    before = ckpt["callbacks"]["EfficiencyMonitor"]["train_s"]
    rows = list(csv.DictReader((resumed / "csv" / "metrics.csv").read_text().splitlines()))
    epoch0 = [float(r["time/train_s"]) for r in rows if r["epoch"] == "0" and r["time/train_s"]]
    assert before > 0 and len(epoch0) == 1 and epoch0[0] > before


def test_fsdp2_units_keep_one_process_gradients_over_bf16_weights(tmp_path: Path) -> None:
    """The frozen weights bf16 and LoRA's B non-zero (the adapters pass gradient to their shared inputs): the config's
    FSDP2 units, on a 1-process gloo group, give the unsharded model's gradients bit for bit. With each adapter its
    own unit (wrap_adapters=true), FSDP2's hook on a unit's inputs sums the gradient of an input that q/k/v (or
    gate/up) share per adapter first: other bf16 roundings, 1e-3 relative."""
    import torch.distributed as dist
    from hydra.utils import instantiate
    from torch.distributed.device_mesh import init_device_mesh

    from onelora.models.dtypes import apply_dtype_policy
    from onelora.run.strategies import shard_units

    with hydra_cfg(tmp_path, "experiment=smoke_math", "trainer=fsdp2", "peft=lora", "peft.options.dropout=0") as cfg:
        model, _ = build_peft_model(cfg)
        strategy = instantiate(cfg.trainer.strategy)
    apply_dtype_policy(model, "bfloat16", "float32")
    gen = torch.Generator().manual_seed(0)
    for n, p in model.named_parameters():
        if n.endswith("lora_B"):
            p.data.normal_(0, 0.1, generator=gen)
    reference = copy.deepcopy(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=gen)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        shard_units(model, init_device_mesh("cpu", (1,)), strategy._unit_classes, strategy._activation_classes)
        for m in (model, reference):
            m(input_ids=ids, labels=ids).loss.backward()
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    finally:
        dist.destroy_process_group()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert grads.keys() == expected.keys() and len(grads) == 28
    for n, g in expected.items():
        assert torch.equal(grads[n], g), (n, ((grads[n] - g).abs().max() / g.abs().max()).item())
