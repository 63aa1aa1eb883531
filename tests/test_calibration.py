"""Figure 11's pieces: ECE by hand, and the calibration script over classification runs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, hydra_cfg, write_cifar10
from PIL import Image

from onelora.report.calibration import expected_calibration_error
from onelora.run.train import train

sys.path.insert(0, str(ROOT / "scripts"))
import calibration  # noqa: E402


def test_ece_by_hand() -> None:
    # 2 bins: (0, .5] holds confidences .2, .4 (accuracy 1/2, mean confidence .3); (.5, 1] holds .9, .7, .6
    # (accuracy 1/3, mean confidence .7333): ECE = 2/5 |.5 - .3| + 3/5 |1/3 - .7333| = .08 + .24 = .32
    conf = np.array([0.2, 0.4, 0.9, 0.7, 0.6])
    correct = np.array([1.0, 0.0, 1.0, 0.0, 0.0])
    assert expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(0.32)
    assert expected_calibration_error(np.array([0.8, 0.8]), np.array([1.0, 0.0]), n_bins=10) == pytest.approx(0.3)


def test_classification_runs_write_predictions_and_the_script_plots(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "data" / "cifar_synthetic")
    for method in ("onelora", "lora"):
        out = tmp_path / "runs" / method
        with hydra_cfg(tmp_path, "experiment=smoke_classification", f"peft={method}", f"paths.output_dir={out}") as cfg:
            record, _ = train(cfg)
        pred = torch.load(out / "predictions.pt", weights_only=True)
        n = len(pred["loss"])
        assert n == 8 and set(pred) == {"confidence", "correct", "loss"}  # limit_val_batches=2 x batch 4
        assert record["metrics"]["accuracy"] == pytest.approx(pred["correct"].mean().item())
        ours = expected_calibration_error(pred["confidence"].numpy(), pred["correct"].numpy(), n_bins=15)
        assert record["metrics"]["ece"] == pytest.approx(ours, abs=1e-6)  # torchmetrics' ECE, independently
    assert calibration.main([str(tmp_path / "runs"), "--out", str(tmp_path / "fig11")]) == 0
    rows = (tmp_path / "fig11" / "calibration.csv").read_text().splitlines()
    assert rows[0].startswith("method,") and {r.split(",")[0] for r in rows[1:]} == {"onelora", "lora"}
    assert Image.open(tmp_path / "fig11" / "calibration.png").size[0] > 0
    assert calibration.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


def test_a_run_found_twice_counts_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`calibration.py logs` saw a single run's seed 0 beside the multirun's identical seed 0 and pooled both."""
    import json
    import shutil

    def run(folder: Path, seed: int, conf: list[float], correct: list[float]) -> None:
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({"peft": "lora", "seed": seed, "status": "ok"}))
        torch.save({"confidence": torch.tensor(conf), "correct": torch.tensor(correct),
                    "loss": -torch.log(torch.tensor(conf))}, folder / "predictions.pt")  # fmt: skip

    run(tmp_path / "multiruns" / "lora" / "seed0", 0, [0.9, 0.6], [1.0, 0.0])
    run(tmp_path / "multiruns" / "lora" / "seed1", 1, [0.8, 0.7], [1.0, 1.0])
    shutil.copytree(tmp_path / "multiruns" / "lora" / "seed0", tmp_path / "runs" / "lora" / "seed0")  # the same run
    assert calibration.main([str(tmp_path), "--out", str(tmp_path / "fig11"), "--bins", "2"]) == 0
    row = (tmp_path / "fig11" / "calibration.csv").read_text().splitlines()[1].split(",")
    # seeds 0 and 1 once each: 4 samples, 3 correct; 2 bins: (.5, 1] holds all four, |3/4 - 0.75| = 0
    assert row[:4] == ["lora", "4", "0.750000", "0.000000"]
    assert "counted once: 1 run(s)" in capsys.readouterr().out
