"""Preemption with the paper's schedulers and accumulation: kill -9 and SIGTERM to real subprocesses, each run
resumed and compared with one uninterrupted run of the same seed, step by step (loss and learning rate) and at
the end (the final metrics, exactly)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, hydra_cfg

from onelora.run.train import train

LR = (
    "+callbacks.lr._target_=lightning.pytorch.callbacks.LearningRateMonitor",
    "+callbacks.lr.logging_interval=step",
)  # the learning rate of every step, in csv/metrics.csv


def _cli(tmp: Path, run: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    paths = [f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={tmp / run}", f"paths.output_dir={tmp / run}"]
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, *paths], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)  # fmt: skip


def _signal(name: str, step: int = -1, **at: int) -> list[str]:
    return [f"+callbacks.{name}._target_=helpers.SignalAtStep", f"+callbacks.{name}.step={step}",
            f"+callbacks.{name}.signal={name.upper()}", *(f"+callbacks.{name}.{k}={v}" for k, v in at.items())]  # fmt: skip


def _train(tmp: Path, run: str, *args: str) -> dict:
    with hydra_cfg(tmp, *args, f"paths.output_dir={tmp / run}") as cfg:
        return train(cfg)[0]


def _per_step(run: Path) -> dict[str, dict[int, str]]:
    """The training loss and the learning rate logged at each optimizer step (csv/metrics.csv)."""
    out: dict[str, dict[int, str]] = {"loss": {}, "lr": {}}
    with open(run / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for key, col in (("loss", "train/loss_step"), ("lr", next(c for c in row if c.startswith("lr-")))):
                if row[col]:
                    out[key][int(row["step"])] = row[col]
    return out


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name != "last.ckpt")


def _same_as_straight(tmp: Path, run: str, straight: dict) -> None:
    resumed = json.loads((tmp / run / "result.json").read_text())
    assert resumed["status"] == straight["status"] == "ok"
    assert resumed["metrics"] == straight["metrics"] and resumed["metric_best"] == straight["metric_best"]
    steps, expected = _per_step(tmp / run), _per_step(tmp / "straight")
    assert steps == expected and len(expected["lr"]) >= 6  # the same batches and the same lr at every step


# --- kill -9 in the middle of an epoch, the schedule sized by trainer.estimated_stepping_batches (Lightning#20550) ----
@pytest.mark.slow
def test_mde_onecycle_kill9_mid_epoch_replays_nothing(tmp_path: Path) -> None:
    # 4 steps an epoch, a checkpoint at each; killed when step 2 ends, before its checkpoint: resumes from step 1
    args = ("experiment=smoke_mde", "peft=onelora", "data.module.batch_size=1", "trainer.limit_train_batches=null",
            "trainer.max_epochs=2", "callbacks.checkpoint.every_n_train_steps=1", *LR)  # fmt: skip
    straight = _train(tmp_path, "straight", *args)
    proc = _cli(tmp_path, "run", *args, *_signal("sigkill", 2))
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert os.readlink(tmp_path / "run" / "checkpoints" / "last.ckpt") == "epoch=0-step=1.ckpt"
    _train(tmp_path, "run", *args)
    _same_as_straight(tmp_path, "run", straight)
    # save_top_k=1 holds across the resume: the checkpoint it resumed from is gone too (Lightning#18687 keeps it)
    assert _checkpoints(tmp_path / "run") == ["epoch=1-step=8.ckpt"]


# --- the same with the cosine schedule and accumulation; then SIGTERM inside an accumulation window ----------------
@pytest.mark.slow
def test_math_cosine_kill9_then_sigterm_inside_accumulation_window(tmp_path: Path) -> None:
    # 8 steps of 2 micro-batches (global batch 4 = 2 × 2), checkpoints every 3 steps
    args = ("experiment=smoke_math", "peft=onelora", "trainer.limit_train_batches=null", "trainer.max_epochs=1",
            "callbacks.checkpoint.every_n_train_steps=3", *LR)  # fmt: skip
    straight = _train(tmp_path, "straight", *args)
    ckpts = tmp_path / "run" / "checkpoints"
    # 1. kill -9 when step 4 ends (micro-batch 7): the checkpoint of step 3 is the resume point
    proc = _cli(tmp_path, "run", *args, *_signal("sigkill", 4))
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert os.readlink(ckpts / "last.ckpt") == "epoch=0-step=3.ckpt"
    # 2. resumed, SIGTERM when micro-batch 8 ends: the first half of step 5's window. The run finishes the window,
    # steps, and checkpoints there (step 5), instead of saving step 4 without micro-batch 8's gradient
    proc = _cli(tmp_path, "run", *args, *_signal("sigterm", micro_batch=8))
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert os.readlink(ckpts / "last.ckpt") == "epoch=0-step=5.ckpt"
    assert _checkpoints(tmp_path / "run") == ["epoch=0-step=5.ckpt"]  # save_top_k=1, the resumed-from one gone
    ckpt = torch.load(ckpts / "epoch=0-step=5.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 5 and ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"] == 10
    # 3. resumed to the end: the uninterrupted run's every step and result
    _train(tmp_path, "run", *args)
    _same_as_straight(tmp_path, "run", straight)
    assert _checkpoints(tmp_path / "run") == ["epoch=0-step=6.ckpt"]  # after two stops and three processes: one


# --- SIGTERM during validation: a checkpoint at the signal; the resumed run validates again, then trains on --------
@pytest.mark.slow
def test_sigterm_during_validation_checkpoints_there_and_resumes_exactly(tmp_path: Path) -> None:
    # 2 epochs of 4 steps, a checkpoint at each epoch's end (after its validation); SIGTERM after the first of
    # epoch 0's 2 validation batches
    args = ("experiment=smoke_classification", "peft=onelora")
    straight = _train(tmp_path, "straight", *args)
    proc = _cli(tmp_path, "run", *args, *_signal("sigterm", 4, val_batch=0))
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert _checkpoints(tmp_path / "run") == ["epoch=0-step=4.ckpt"]  # at the signal: epoch 0's training kept
    _train(tmp_path, "run", *args)
    resumed = json.loads((tmp_path / "run" / "result.json").read_text())
    assert resumed["metrics"] == straight["metrics"] and resumed["metric_best"] == straight["metric_best"]
    assert _validations(tmp_path / "run") == _validations(tmp_path / "straight")  # epoch 0's validation included


def _validations(run: Path) -> dict[int, str]:
    with open(run / "csv" / "metrics.csv") as f:
        return {int(r["epoch"]): r["val/accuracy"] for r in csv.DictReader(f) if r.get("val/accuracy")}
