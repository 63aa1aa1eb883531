"""Every smoke experiment runs from the command line on a fresh clone: its synthetic data set builds itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from onelora.data.synthetic import ensure_synthetic
from onelora.errors import DatasetFormatError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ("smoke_mde", "smoke_math", "smoke_generation", "smoke_classification")


def test_every_smoke_experiment_runs_through_run_py_from_a_fresh_data_dir(tmp_path: Path) -> None:
    # one multirun over the four experiments (one interpreter start), everything under an empty root
    env = {**os.environ, "ONELORA_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "offline"}  # fmt: skip
    proc = subprocess.run([sys.executable, "run.py", "-m", f"experiment={','.join(SMOKE)}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for folder in ("depth_synthetic", "metamath_synthetic", "food101_synthetic", "cifar_synthetic"):
        assert f"written to {tmp_path / 'data' / folder}" in proc.stdout  # one line says where it went
    # the screen: the suite's lines only; Lightning's lines, its advert, dependency warnings and progress bars
    # went to each run's log file (onelora.run.logs), which keeps them
    screen = proc.stdout + proc.stderr
    for noise in ("INFO:", "💡", "deprecated", "Loading weights", "GPU available", "Trainer.fit` stopped"):
        assert noise not in screen, noise
    assert screen.count("ok: ") == 4 and screen.count("epoch 1/") == 4
    logs = [p.read_text() for p in (tmp_path / "logs" / "multiruns").rglob("run.log")]
    assert logs and all("GPU available" in log and "`Trainer.fit` stopped" in log for log in logs)
    records = [json.loads(p.read_text()) for p in (tmp_path / "logs" / "multiruns").rglob("result.json")]
    assert sorted(r["name"] for r in records) == sorted(SMOKE)
    assert all(r["status"] == "ok" and r["metric_best"] is not None for r in records), records


def test_synthetic_data_sets_are_deterministic_and_never_overwritten(tmp_path: Path) -> None:
    def build(root: Path) -> dict[str, bytes]:
        ensure_synthetic(OmegaConf.create({"name": "x", "synthetic": {"builder": "food101", "root": str(root)}}))
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first, second = build(tmp_path / "a"), build(tmp_path / "b")
    assert first == second and any(k.endswith(".jpg") for k in first) and "food-101/meta/train.txt" in first
    (tmp_path / "a" / "food-101" / "meta" / "train.txt").write_text("mine\n")
    build(tmp_path / "a")  # the folder exists: left as it is
    assert (tmp_path / "a" / "food-101" / "meta" / "train.txt").read_text() == "mine\n"
    assert not list(tmp_path.glob(".*.tmp"))
    (tmp_path / "file").write_text("")  # an unwritable data folder (a file in the way): one line, not a traceback
    with pytest.raises(DatasetFormatError, match=r"cannot write the synthetic food101 .* paths\.data_dir="):
        build(tmp_path / "file" / "c")
