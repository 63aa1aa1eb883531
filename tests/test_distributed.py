"""Several processes give the numbers one process gives: validation under DDP counts each sample exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import ROOT, hydra_cfg
from torch.utils.data import DataLoader, DistributedSampler

from onelora.run.train import train
from onelora.tasks.base import PeftTask


@pytest.mark.parametrize("n", [1, 2, 5, 7])
@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_kept_samples_are_each_sample_once(n: int, world: int, batch_size: int) -> None:
    """The oracle is Lightning's validation sampler itself: the indices it hands each process, batch by batch."""
    dataset = list(range(n))
    seen: list[int] = []
    for rank in range(world):
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler)
        task = PeftTask(torch.nn.Linear(1, 1), optimizer=torch.optim.SGD)
        task._trainer = SimpleNamespace(val_dataloaders=loader)
        for batch_idx, batch in enumerate(loader):
            task._keep = task._repeated_samples_mask(batch_idx, len(batch))
            seen += task.kept(batch).tolist()
    assert sorted(seen) == dataset  # a process may see no real sample at all (3 processes, 2 images)


@pytest.mark.slow
def test_ddp_validation_on_three_processes_equals_one_process(tmp_path: Path) -> None:
    """MDE with 2 validation images on 3 CPU processes (gloo): the sampler repeats one image for the third process;
    the depth metrics count each image once and equal one process's, on the same weights (lr 1e-30: every step below a weight's last bit; lr=0 is refused)."""
    args = ("experiment=smoke_mde", "peft=onelora", "trainer.max_epochs=1", "task.optimizer.lr=1e-30",
            "data.module.batch_size=1", "data.module.eval_batch_size=1", "trainer.precision=32-true")  # fmt: skip
    with hydra_cfg(tmp_path, *args, f"paths.output_dir={tmp_path / 'one'}") as cfg:
        one, _ = train(cfg)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    ddp = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args, "trainer=ddp", "trainer.accelerator=cpu",
                           "trainer.devices=3", f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={ddp}",
                           f"paths.output_dir={ddp}"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((ddp / "result.json").read_text())
    assert one["metrics"]["num_images"] == record["metrics"]["num_images"] == 2  # not 3
    assert record["metrics"] == pytest.approx(one["metrics"], rel=1e-12, abs=1e-12)
