"""1LoRA's fast path (`OneLoRAFunction`) against the paper's listing in plain autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from onelora.peft import apply_peft
from onelora.peft.onelora import OneLoRAFunction, onelora_reference, use_merged_weight


def _grads(fn, x, w, bias, b, g=None):
    x = x.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    bias = None if bias is None else bias.detach().clone().requires_grad_(True)
    y = fn(x, w, bias, b)
    if g is None:
        g = torch.randn_like(y, dtype=torch.float32, generator=torch.Generator().manual_seed(1)).to(y.dtype)
    y.backward(g)
    return y, x.grad, b.grad, None if bias is None else bias.grad


@pytest.mark.parametrize(
    "shape,merged", [((2, 12), False), ((1, 3, 12), False), ((600, 12), True), ((3, 200, 12), True)]
)
@pytest.mark.parametrize("with_bias", [False, True])
def test_fast_path_equals_listing_fp32(shape: tuple[int, ...], merged: bool, with_bias: bool) -> None:
    """Both forms: additive (few tokens) and merged weight (many tokens per weight element)."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(*shape, generator=gen), torch.randn(9, 12, generator=gen)
    assert use_merged_weight(x, w, torch.zeros(9)) is merged
    b, bias = torch.randn(9, generator=gen), (torch.randn(9, generator=gen) if with_bias else None)
    fast = _grads(OneLoRAFunction.apply, x, w, bias, b)
    ref = _grads(onelora_reference, x, w, bias, b)
    for f, r in zip(fast, ref):
        if r is None:
            assert f is None
        else:
            torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 96), (4, 16, 96)])
def test_fast_path_bf16_keeps_b_and_its_gradient_fp32_accurate(shape: tuple[int, ...]) -> None:
    """bf16 activations and weight, fp32 b: grad_b equals the fp64 gᵀ(1ᵀx) of the same bf16 inputs."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen).bfloat16()
    w = (torch.randn(48, 96, generator=gen) * 0.05).bfloat16()
    b = torch.randn(48, generator=gen) * 1e-3
    y, gx, gb, _ = _grads(OneLoRAFunction.apply, x, w, None, b)
    assert y.dtype == torch.bfloat16 and gx.dtype == torch.bfloat16 and gb.dtype == torch.float32
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).bfloat16().double()
    s = x.double().sum(-1, keepdim=True)
    gb64 = (g * s).reshape(-1, 48).sum(0)
    torch.testing.assert_close(gb.double(), gb64, rtol=1e-5, atol=1e-6)  # fp32 accumulation, no bf16 rounding
    y64 = x.double() @ w.double().T + s * b.double()
    torch.testing.assert_close(y.double(), y64, rtol=2e-2, atol=2e-2)  # bf16 output rounding
    gx64 = g @ w.double() + (g @ b.double()).unsqueeze(-1)
    torch.testing.assert_close(gx.double(), gx64, rtol=2e-2, atol=2e-2)


def test_small_updates_survive_in_bf16() -> None:
    """b below bf16's resolution of W: the additive path keeps it, a merged bf16 weight (W + b1ᵀ) would not."""
    x = torch.ones(2, 8, dtype=torch.bfloat16)
    w = torch.tensor([1.0, -1.0] * 4).repeat(4, 1).bfloat16()  # W x = 0 exactly, entries of size 1
    b = torch.full((4,), 0.003)
    exact = 8 * 0.003
    y = OneLoRAFunction.apply(x, w, None, b)
    torch.testing.assert_close(y.float(), torch.full((2, 4), exact), rtol=1e-2, atol=0)
    merged = x @ (w + b[:, None].bfloat16()).T
    assert (merged.float() - exact).abs().max() > 0.1 * exact


def test_autocast_bf16_on_cpu() -> None:
    adapted = apply_peft(nn.Sequential(nn.Linear(12, 6)), "onelora", exclude_modules=[])[0]
    with torch.no_grad():
        adapted.adapter.b.normal_()
    x = torch.randn(5, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = adapted(x)
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and adapted.adapter.b.grad.dtype == torch.float32
    ref_b = x.detach().sum(-1).sum() * torch.ones(6)  # d(Σy)/db_i = Σ_tokens 1ᵀx
    torch.testing.assert_close(adapted.adapter.b.grad, ref_b, rtol=2e-2, atol=2e-2)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of activations autograd keeps, each storage once; parameters (and views of them) excluded."""
    seen: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return sum(seen.values())


def test_onelora_keeps_one_scalar_per_token_beyond_bitfit() -> None:
    """Saved activations: 1LoRA = BitFit + 4 bytes per token and layer; LoRA keeps the layer inputs."""

    def mlp() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))

    x = torch.randn(10, 32)
    sizes = {}
    for method in ("bitfit", "onelora", "lora"):
        sizes[method] = _saved_bytes(apply_peft(mlp(), method, exclude_modules=[]), x)
    assert sizes["onelora"] - sizes["bitfit"] == 2 * 10 * 4
    assert sizes["lora"] - sizes["bitfit"] >= 10 * 32 * 4  # at least the first layer's input


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gamma_scale_keeps_output_and_equals_plain_product(dtype: torch.dtype) -> None:
    """DiffFit's γ ⊙ (W0 x + β) through `ScaleOutput`: the same values and gradients as `y * γ` in autograd."""
    from onelora.peft.layer import ScaleOutput

    gen = torch.Generator().manual_seed(0)
    y0 = torch.randn(3, 5, 7, generator=gen, dtype=dtype)
    gamma0 = 1 + 0.1 * torch.randn(7, generator=gen, dtype=dtype)
    g = torch.randn(3, 5, 7, generator=gen, dtype=dtype)
    grads = []
    for fn in (ScaleOutput.apply, torch.mul):
        y, gamma = y0.clone().requires_grad_(True), gamma0.clone().requires_grad_(True)
        out = fn(y, gamma)
        out.backward(g)
        grads.append((out.detach(), y.grad, gamma.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("shape", [(6, 16), (2, 3, 16)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fast_path_is_the_listing_bit_for_bit(merged: bool, shape: tuple[int, ...], with_bias: bool) -> None:
    """Small integers make every sum and product exact in fp32, so any evaluation of the same math gives the same
    bits: output and every gradient of both forms equal the paper's listing in autograd, bit for bit."""
    gen = torch.Generator().manual_seed(0)

    def ints(*size: int) -> torch.Tensor:
        return torch.randint(-3, 4, size, generator=gen).float()

    x, w, b = ints(*shape), ints(8, 16), ints(8)
    bias = ints(8) if with_bias else None
    g = ints(*shape[:-1], 8)
    fast = _grads(lambda *a: OneLoRAFunction.apply(*a, merged), x, w, bias, b, g)
    ref = _grads(onelora_reference, x, w, bias, b, g)
    assert fast[0].abs().max() > 0 and fast[1].abs().max() > 0  # the comparison is not of zeros
    for f, r in zip(fast, ref):
        assert (f is None and r is None) or torch.equal(f, r)


@pytest.mark.parametrize("shape,merged", [((64, 256), False), ((2, 32, 256), False), ((2, 300, 256), True)])
def test_training_step_costs_bitfit_plus_four_ops_per_layer(shape: tuple[int, ...], merged: bool) -> None:
    """The kernel count, which a GPU pays per op at any width: forward + backward of two adapted layers (input
    gradient included), counted by the profiler. The floor is the forward's sum and multiply-add and the
    backward's gᵀs and g b; a no-op cast or an extra pass over an activation adds ops and fails here."""
    from onelora.costs.opcount import top_level_ops

    x = torch.randn(*shape, requires_grad=True)
    assert use_merged_weight(x, torch.zeros(256, 256), torch.zeros(256)) is merged
    counts = {}
    for method in ("bitfit", "onelora", "lora"):
        torch.manual_seed(0)
        model = apply_peft(nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256)), method, exclude_modules=[])

        def step(model: nn.Module = model) -> None:
            model.zero_grad(set_to_none=True)
            x.grad = None
            model(x).sum().backward()

        step()  # first-call set-up stays out of the count
        counts[method] = sum(top_level_ops(step).values())
    assert counts["onelora"] <= counts["bitfit"] + 2 * 4, counts
    assert counts["onelora"] < counts["lora"], counts
