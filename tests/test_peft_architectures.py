"""Every paper architecture, built from its tiny model config: methods leave outputs unchanged at step 0,
merge into plain layers with the same outputs, and round-trip through save/load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import CONFIGS
from omegaconf import OmegaConf

from onelora.models import build_model
from onelora.peft import AdaptedLinear, apply_peft, load_peft, merge_peft, save_peft

METHODS = ["onelora", "lora", "dora", "vera", "mora1", "mora6", "difffit", "onelora_bias_gamma_norms"]


def _inputs(kind: str, model: torch.nn.Module) -> dict:
    g = torch.Generator().manual_seed(0)
    if kind == "depth_estimator":
        return {"pixel_values": torch.randn(2, 3, 56, 56, generator=g)}
    if kind == "diffusion_transformer":
        n = model.config.num_embeds_ada_norm
        return {"hidden_states": torch.randn(2, 4, 8, 8, generator=g), "timestep": torch.tensor([3, 500]),
                "class_labels": torch.tensor([1, n - 1])}  # fmt: skip
    raise ValueError(kind)


def _out(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    out = model(**inputs)
    return getattr(out, "predicted_depth", None) if hasattr(out, "predicted_depth") else out.sample


@pytest.fixture(scope="module", params=["depth_anything_tiny", "dit_tiny"])
def arch(request):
    spec = OmegaConf.load(CONFIGS / "model" / f"{request.param}.yaml")
    # the architecture alone; a wider init so the tiny depth head's output is not saturated (constant)
    overrides = {"initializer_range": 0.1} if spec.kind == "depth_estimator" else {}
    spec = OmegaConf.merge(spec, {"overrides": overrides, "post_build": None})
    torch.manual_seed(0)
    model = build_model(spec).eval()
    return spec, model, _inputs(spec.kind, model)


@pytest.mark.parametrize("method", METHODS)
def test_step0_merge_and_round_trip(arch, method: str, tmp_path: Path) -> None:
    spec, base, inputs = arch
    with torch.no_grad():
        ref = _out(base, inputs)
        model = apply_peft(copy.deepcopy(base), method, head=list(spec.head) if spec.train_head else None)
        torch.testing.assert_close(_out(model, inputs), ref, rtol=0, atol=1e-6)
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        adapted = _out(model, inputs)
        assert not torch.allclose(adapted, ref)
        save_peft(model, tmp_path)
        loaded = load_peft(copy.deepcopy(base), tmp_path)
        torch.testing.assert_close(_out(loaded, inputs), adapted, rtol=0, atol=0)
        merged = merge_peft(model)
        assert not any(isinstance(m, AdaptedLinear) for m in merged.modules())
        torch.testing.assert_close(_out(merged, inputs), adapted, rtol=1e-5, atol=1e-5)
