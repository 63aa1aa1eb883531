"""Figure 9's analysis: principal alignment by hand, and the script over real (tiny) full and LoRA runs."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, hydra_cfg, write_cifar10

from onelora.report.pca import layer_type, principal_alignment
from onelora.run.train import train

sys.path.insert(0, str(ROOT / "scripts"))
import pca_update  # noqa: E402


def test_rank1_summation_update_is_fully_aligned_with_summation() -> None:
    b = torch.tensor([1.0, -2.0, 0.5])
    delta = b[:, None] * torch.ones(1, 4)  # ΔW = b 1ᵀ: exactly what 1LoRA can express
    out = principal_alignment(delta, {"summation": torch.ones(4), "e0": torch.tensor([1.0, 0, 0, 0])})
    assert out["summation"] == pytest.approx(1.0)
    assert out["e0"] == pytest.approx(0.5)  # |cos(1/2·1, e0)| = 1/2


def test_layer_types() -> None:
    assert layer_type("vit.encoder.layer.0.attention.q_proj") == "attention"
    assert layer_type("vit.encoder.layer.0.attention.output.dense") is None
    assert layer_type("model.layers.3.mlp.down_proj") == "mlp_out"
    assert layer_type("encoder.layer.1.mlp.fc1") == "mlp_in"


def test_script_on_full_and_lora_runs(tmp_path: Path) -> None:
    """Over a sweep's folders as the README names them (`<method>/seed0`, one level above the run) and without
    transformers' loading bars: the README's path held no run and each model load drew two bars."""
    from transformers import ViTConfig, ViTForImageClassification

    write_cifar10(tmp_path / "data" / "cifar_synthetic")
    source = tmp_path / "vit"  # a pre-trained source loaded with from_pretrained, as the demo's runs load theirs
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, image_size=32, patch_size=8,
                                         num_labels=10)).save_pretrained(source)  # fmt: skip
    seeds = {}
    for method in ("full", "lora"):
        seeds[method] = tmp_path / "multiruns" / method / "seed0"
        run = seeds[method] / "trainer.enable_progress_bar=false"  # the folder a sweep names by its overrides
        with hydra_cfg(tmp_path, "experiment=smoke_classification", f"peft={method}", f"paths.output_dir='{run}'",
                       f"model.pretrained={source}") as cfg:  # fmt: skip
            assert train(cfg)[0]["status"] == "ok"
    out = tmp_path / "fig9"
    script = [sys.executable, str(ROOT / "scripts" / "pca_update.py")]
    proc = subprocess.run([*script, str(seeds["full"]), "--lora", str(seeds["lora"]), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f"wrote {out / 'alignment.csv'} and {out / 'alignment.png'}"
    rows = list(csv.DictReader(open(out / "alignment.csv")))
    assert {r["type"] for r in rows} == {"attention", "mlp_in", "mlp_out"}
    assert len(rows) == 2 * (3 + 2)  # tiny ViT: 2 blocks of q, k, v, fc1, fc2
    assert all(0 <= float(r[k]) <= 1 for r in rows for k in ("summation", "random", "lora_A"))
    assert (out / "alignment.png").stat().st_size > 0
    assert pca_update.main([str(seeds["lora"]), "--out", str(out)]) == 2  # not a full fine-tuning run
    assert pca_update.main([str(tmp_path / "multiruns"), "--out", str(out)]) == 2  # two runs below: which one?
