"""LoRA, DoRA and VeRA on bf16 models equal HF peft's numerics (peft is the oracle; issue 11 items 13 and 14, issue 21).

- DoRA: peft computes the magnitude scale c = m / ‖W0 + sBA‖ in fp32 (the adapter's dtype) and rounds the
  layer's output once to bf16. Same weights in both libraries must give the same bf16 outputs and gradients.
- VeRA: peft's frozen projections hold the fp32 draw rounded to the base model's dtype. Ours must hold the
  same values, so an adapter moves between the libraries unchanged: same outputs, same merged weights.
- LoRA and VeRA with dropout, in train mode: peft casts the input to the adapter's dtype, then drops out.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
from peft import LoraConfig, VeraConfig, get_peft_model  # noqa: E402

from onelora.peft import apply_peft, merge_peft  # noqa: E402

LAYERS = ["l0", "l1", "l2"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l0, self.l1, self.l2 = nn.Linear(24, 32), nn.Linear(32, 32), nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(torch.tanh(self.l0(x)))))


def bf16_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return Net().to(torch.bfloat16)


def grads(model: nn.Module, params: list[torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    y = model(x)
    (y.float() * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
    return [y.detach(), *[p.grad for p in params]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dora_bf16_equals_peft(seed):
    base = bf16_net(seed)
    ours = apply_peft(copy.deepcopy(base), "dora", target_modules=LAYERS, rank=2, alpha=4.0)
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4.0, target_modules=LAYERS, use_dora=True))
    g = torch.Generator().manual_seed(seed + 10)
    po, pt = [], []
    with torch.no_grad():
        for name in LAYERS:
            a, t = ours.get_submodule(name).adapter, theirs.base_model.model.get_submodule(name)
            pairs = [
                (a.lora_A, t.lora_A["default"].weight),
                (a.lora_B, t.lora_B["default"].weight),
                (a.magnitude, t.lora_magnitude_vector["default"].weight),
            ]
            # m = ‖W0‖_row at init: ours in fp32 (the step-0 output is the base exactly), peft's rounded to bf16
            w0 = base.get_submodule(name).weight.float()
            torch.testing.assert_close(pairs[2][0], w0.norm(dim=1), atol=0, rtol=0)
            torch.testing.assert_close(pairs[2][1], w0.norm(dim=1).bfloat16().float(), atol=0, rtol=0)
            for mine, peer in pairs:
                assert mine.dtype == peer.dtype == torch.float32
                peer.add_(torch.randn(peer.shape, generator=g) * 0.2)
                mine.copy_(peer)
                po.append(mine)
                pt.append(peer)
    x = torch.randn(6, 24, generator=g).to(torch.bfloat16)
    out_o, out_t = grads(ours, po, x), grads(theirs, pt, x)
    assert out_o[0].dtype == torch.bfloat16
    torch.testing.assert_close(out_o[0], out_t[0], atol=0, rtol=0)  # the same bf16 outputs, bit for bit
    for i, (a, b) in enumerate(zip(out_o[1:], out_t[1:])):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-3, msg=f"gradient {i}")


@pytest.mark.parametrize("seed", [0, 3])
def test_vera_bf16_projections_outputs_and_merge_equal_peft(seed):
    base = bf16_net(seed)
    ours = apply_peft(copy.deepcopy(base), "vera", target_modules=LAYERS, rank=4, seed=seed)
    theirs = get_peft_model(copy.deepcopy(base), VeraConfig(r=4, target_modules=LAYERS, projection_prng_key=seed))
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        for name in LAYERS:
            a, t = ours.get_submodule(name).adapter, theirs.base_model.model.get_submodule(name)
            k, d = a.vera_A.shape[1], a.vera_B.shape[0]
            # the projections: peft's values (the fp32 draw rounded to bf16), bit for bit
            torch.testing.assert_close(a.vera_A, t.vera_A["default"][:, :k].float(), atol=0, rtol=0)
            torch.testing.assert_close(a.vera_B, t.vera_B["default"][:d].float(), atol=0, rtol=0)
            assert torch.equal(a.vera_A, a.vera_A.bfloat16().float())
            for mine, peer in ((a.lambda_b, t.vera_lambda_b["default"]), (a.lambda_d, t.vera_lambda_d["default"])):
                peer.add_(torch.randn(peer.shape, generator=g) * 0.3)
                mine.copy_(peer)
    x = torch.randn(6, 24, generator=g).to(torch.bfloat16)
    torch.testing.assert_close(ours(x), theirs(x), atol=0, rtol=0)
    merged_o, merged_t = merge_peft(ours), theirs.merge_and_unload()
    for name in LAYERS:
        wo, wt = merged_o.get_submodule(name).weight, merged_t.get_submodule(name).weight
        assert wo.dtype == wt.dtype == torch.bfloat16
        torch.testing.assert_close(wo, wt, atol=0, rtol=0.01)  # fp32 sums rounded once (ours) or not: 1 bf16 ulp


def _dropout_pairs(method: str, ours: nn.Module, theirs: nn.Module, g: torch.Generator) -> tuple[list, list]:
    """Copy perturbed peft weights into ours; (our params, peft's params) in the same order."""
    po, pt = [], []
    with torch.no_grad():
        for name in LAYERS:
            a, t = ours.get_submodule(name).adapter, theirs.base_model.model.get_submodule(name)
            if method == "lora":
                pairs = [(a.lora_A, t.lora_A["default"].weight), (a.lora_B, t.lora_B["default"].weight)]
            else:
                pairs = [(a.lambda_b, t.vera_lambda_b["default"]), (a.lambda_d, t.vera_lambda_d["default"])]
            for mine, peer in pairs:
                peer.add_(torch.randn(peer.shape, generator=g) * 0.3)
                mine.copy_(peer)
                po.append(mine)
                pt.append(peer)
    return po, pt


@pytest.mark.parametrize("method", ["lora", "vera"])
def test_dropout_after_the_cast_bf16_train_mode_equals_peft(method):
    """peft casts the input to the adapter's dtype (fp32), then drops out: the 1/(1-p) rescale happens in fp32.
    Dropping out the bf16 input first rounds the rescaled values to bf16 (outputs off by a few bf16 steps)."""
    base = bf16_net(5)
    if method == "lora":
        ours = apply_peft(copy.deepcopy(base), "lora", target_modules=LAYERS, rank=2, alpha=16.0, dropout=0.05)
        cfg = LoraConfig(r=2, lora_alpha=16.0, lora_dropout=0.05, target_modules=LAYERS)
    else:
        ours = apply_peft(copy.deepcopy(base), "vera", target_modules=LAYERS, rank=4, seed=0, dropout=0.05)
        cfg = VeraConfig(r=4, target_modules=LAYERS, projection_prng_key=0, vera_dropout=0.05)
    theirs = get_peft_model(copy.deepcopy(base), cfg)
    ours.train(), theirs.train()
    po, pt = _dropout_pairs(method, ours, theirs, torch.Generator().manual_seed(7))
    x = torch.randn(64, 24, generator=torch.Generator().manual_seed(8)).to(torch.bfloat16)
    torch.manual_seed(123)  # the same dropout masks: both libraries draw them in the same order
    out_o = grads(ours, po, x)
    torch.manual_seed(123)
    out_t = grads(theirs, pt, x)
    assert out_o[0].dtype == torch.bfloat16
    torch.testing.assert_close(out_o[0], out_t[0], atol=0, rtol=0)  # bit for bit
    for i, (a, b) in enumerate(zip(out_o[1:], out_t[1:])):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=f"gradient {i}")
