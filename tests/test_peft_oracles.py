"""Our LoRA, DoRA, VeRA and 1LoRA against HF peft (the reference implementation) and the paper.

Every test builds the same `nn.Linear` twice, puts our adapter on one copy and peft's on
the other, makes both adapters hold identical (nonzero) values, and compares outputs and
gradients (w.r.t. the input and every trainable parameter) at fp32 tolerance.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

peft = pytest.importorskip("peft")
from peft import LoraConfig, MissConfig, VeraConfig, get_peft_model  # noqa: E402

from onelora.peft import AdaptedLinear, apply_peft, count_parameters, merge_peft  # noqa: E402

TOL = {"atol": 1e-6, "rtol": 1e-5}
K, D = 12, 7  # in_features, out_features of the single-layer oracles
INPUT_SHAPES = [(5, K), (2, 3, K)]  # 2-D and 3-D inputs


class OneLinear(nn.Module):
    def __init__(self, k: int, d: int, bias: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(k, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def twin_models(k: int = K, d: int = D, bias: bool = True, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    base = OneLinear(k, d, bias)
    return copy.deepcopy(base), copy.deepcopy(base)


def forward_backward(model: nn.Module, x: torch.Tensor, params: list[torch.Tensor], seed: int | None = None):
    """Output and the gradients of `<y, g>` (fixed random cotangent g) w.r.t. x and `params`."""
    x = x.detach().clone().requires_grad_(True)
    if seed is not None:  # same dropout masks for both implementations
        torch.manual_seed(seed)
    y = model(x)
    g = torch.linspace(-1.0, 1.5, y.numel()).reshape(y.shape)
    (y * g).sum().backward()
    return [y.detach(), x.grad, *[p.grad for p in params]]


def assert_all_close(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a is not None and b is not None, f"item {i} has no gradient"
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, i=i: f"item {i} (0: output, 1: grad x): {m}")


def random_like(t: torch.Tensor, seed: int, scale: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=g) * scale


# ---------------------------------------------------------------------------------------- LoRA


def lora_pair(rank: int, alpha: float, bias: bool, dropout: float = 0.0, dora: bool = False):
    ours, theirs = twin_models(bias=bias)
    method = "dora" if dora else "lora"
    apply_peft(ours, method, target_modules=["lin"], rank=rank, alpha=alpha, dropout=dropout)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=["lin"], use_dora=dora)
    theirs = get_peft_model(theirs, cfg)
    layer = theirs.base_model.model.lin
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    ad = ours.lin.adapter
    with torch.no_grad():  # peft's A, and the same nonzero B in both (B = 0 at init hides every bug)
        ad.lora_A.copy_(a)
        b.copy_(random_like(b, 1))
        ad.lora_B.copy_(b)
    params_ours, params_theirs = [ad.lora_A, ad.lora_B], [a, b]
    if dora:
        m = layer.lora_magnitude_vector["default"].weight
        torch.testing.assert_close(ad.magnitude.detach(), m.detach(), atol=0, rtol=1e-6)  # m = ‖W0‖_row at init
        with torch.no_grad():
            m.add_(random_like(m, 2, 0.1))
            ad.magnitude.copy_(m)
        params_ours.append(ad.magnitude)
        params_theirs.append(m)
    return ours, theirs, params_ours, params_theirs


@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("rank", [1, 4])
def test_lora_matches_peft(rank, bias, shape):
    """Oracle: peft `LoraConfig(r, lora_alpha≠r)`: same outputs and gradients (x, A, B)."""
    ours, theirs, po, pt = lora_pair(rank, alpha=3.0, bias=bias)
    assert ours.lin.adapter.scaling == theirs.base_model.model.lin.scaling["default"] == 3.0 / rank
    x = torch.randn(shape)
    assert_all_close(forward_backward(ours, x, po), forward_backward(theirs, x, pt))


def test_lora_init_matches_peft_distribution():
    """Oracle: peft's init (A ~ U(±1/√k) via kaiming_uniform(a=√5), B = 0)."""
    torch.manual_seed(0)
    model = OneLinear(400, 3, True)
    apply_peft(model, "lora", rank=4, alpha=4.0)
    a, b = model.lin.adapter.lora_A.detach(), model.lin.adapter.lora_B.detach()
    assert a.shape == (4, 400) and b.shape == (3, 4)
    assert torch.count_nonzero(b) == 0
    bound = 1 / math.sqrt(400)
    assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound  # uniform over the whole interval
    assert abs(a.std().item() - bound / math.sqrt(3)) < 0.1 * bound


@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=["2d", "3d"])
def test_lora_dropout_train_matches_peft(shape):
    """Oracle: peft LoRA with dropout, in train mode, with identical (seeded) dropout masks."""
    ours, theirs, po, pt = lora_pair(2, alpha=5.0, bias=True, dropout=0.3)
    ours.train(), theirs.train()
    x = torch.randn(shape)
    assert_all_close(forward_backward(ours, x, po, seed=3), forward_backward(theirs, x, pt, seed=3))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_lora_merge_matches_peft(bias):
    """Oracle: peft `merge_and_unload` (W0 + s·B·A)."""
    ours, theirs, _, _ = lora_pair(4, alpha=3.0, bias=bias)
    merged_ours = merge_peft(ours).lin
    merged_theirs = theirs.merge_and_unload().lin
    assert type(merged_ours) is nn.Linear
    torch.testing.assert_close(merged_ours.weight, merged_theirs.weight, **TOL)


# ---------------------------------------------------------------------------------------- DoRA


@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_dora_matches_peft_no_dropout(bias, shape):
    """Oracle: peft `LoraConfig(use_dora=True, r=1)`, no dropout: outputs, grads of x, A, B, m."""
    ours, theirs, po, pt = lora_pair(1, alpha=2.0, bias=bias, dora=True)
    x = torch.randn(shape)
    assert_all_close(forward_backward(ours, x, po), forward_backward(theirs, x, pt))


@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=["2d", "3d"])
def test_dora_matches_peft_eval_with_dropout(shape):
    """Oracle: peft DoRA with dropout 0.3 in eval mode (dropout off, base output reused)."""
    ours, theirs, po, pt = lora_pair(1, alpha=2.0, bias=True, dropout=0.3, dora=True)
    ours.eval(), theirs.eval()
    x = torch.randn(shape)
    assert_all_close(forward_backward(ours, x, po), forward_backward(theirs, x, pt))


@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=["2d", "3d"])
def test_dora_matches_peft_train_with_dropout(shape):
    """Oracle: peft DoRA with dropout 0.3 in train mode, identical masks (same seed, one draw each)."""
    ours, theirs, po, pt = lora_pair(1, alpha=2.0, bias=True, dropout=0.3, dora=True)
    ours.train(), theirs.train()
    x = torch.randn(shape)
    a = forward_backward(ours, x, po, seed=5)
    assert_all_close(a, forward_backward(theirs, x, pt, seed=5))
    # the masks really were used: without them the output differs
    ours.eval()
    assert not torch.allclose(ours(x), a[0], atol=1e-3)


def test_dora_merge_matches_peft():
    """Oracle: peft DoRA `merge_and_unload` (m/‖W0 + sBA‖ ⊙ (W0 + sBA))."""
    ours, theirs, _, _ = lora_pair(1, alpha=2.0, bias=True, dora=True)
    torch.testing.assert_close(merge_peft(ours).lin.weight, theirs.merge_and_unload().lin.weight, **TOL)


# ---------------------------------------------------------------------------------------- VeRA


class ThreeShapes(nn.Module):
    """Three linear layers of different shapes, so VeRA's shared A, B are sliced differently."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1, self.lin2, self.lin3 = nn.Linear(8, 12), nn.Linear(12, 5, bias=False), nn.Linear(5, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin3(torch.tanh(self.lin2(torch.tanh(self.lin1(x)))))


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("rank", [1, 2])
def test_vera_matches_peft(rank, seed):
    """Oracle: peft `VeraConfig(r, projection_prng_key=seed)`: our own init reproduces peft's
    projections exactly (no copying), then outputs and grads (x, λ_b, λ_d) match."""
    names = ["lin1", "lin2", "lin3"]
    torch.manual_seed(0)
    base = ThreeShapes()
    ours = apply_peft(copy.deepcopy(base), "vera", target_modules=names, rank=rank, seed=seed)
    cfg = VeraConfig(r=rank, target_modules=names, projection_prng_key=seed, d_initial=0.1)
    theirs = get_peft_model(copy.deepcopy(base), cfg)
    full_a, full_b = theirs.base_model.vera_A["default"], theirs.base_model.vera_B["default"]
    assert full_a.shape == (rank, 12) and full_b.shape == (12, rank)  # (r, k_max), (d_max, r)
    po, pt = [], []
    for i, name in enumerate(names):
        ad, layer = getattr(ours, name).adapter, getattr(theirs.base_model.model, name)
        assert torch.equal(ad.vera_A, full_a[:, : layer.in_features])
        assert torch.equal(ad.vera_B, full_b[: layer.out_features])
        lb, ld = layer.vera_lambda_b["default"], layer.vera_lambda_d["default"]
        assert torch.equal(ad.lambda_b, lb) and torch.equal(ad.lambda_d, ld)  # 0 and d_initial
        assert torch.count_nonzero(ad.lambda_b) == 0 and torch.all(ad.lambda_d == 0.1)
        with torch.no_grad():
            lb.copy_(random_like(lb, 10 + i))
            ld.add_(random_like(ld, 20 + i, 0.1))
            ad.lambda_b.copy_(lb)
            ad.lambda_d.copy_(ld)
        po += [ad.lambda_b, ad.lambda_d]
        pt += [lb, ld]
    for shape in [(4, 8), (2, 3, 8)]:
        x = torch.randn(shape)
        for p in po + pt:
            p.grad = None
        assert_all_close(forward_backward(ours, x, po), forward_backward(theirs, x, pt))
    merged_ours = merge_peft(copy.deepcopy(ours))
    merged_theirs = copy.deepcopy(theirs).merge_and_unload()
    for name in names:
        torch.testing.assert_close(getattr(merged_ours, name).weight, getattr(merged_theirs, name).weight, **TOL)


# ---------------------------------------------------------------------------------------- 1LoRA


def paper_listing(x: torch.Tensor, linear: nn.Linear, b: torch.Tensor) -> torch.Tensor:
    """The paper's code listing for 1LoRA."""
    return linear(x) + b * x.sum(-1, keepdim=True)


@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_onelora_matches_listing_and_peft_miss(bias, shape):
    """Oracles: the paper's listing `linear(x) + b * x.sum(-1, keepdim=True)` and peft
    `MissConfig(r=1)`: outputs, grads (x, b), trainable count d and merged weights W0 + b1ᵀ."""
    ours, theirs = twin_models(bias=bias)
    plain = copy.deepcopy(ours.lin)
    apply_peft(ours, "onelora", target_modules=["lin"])
    theirs = get_peft_model(theirs, MissConfig(r=1, target_modules=["lin"]))
    miss = theirs.base_model.model.lin.miss_block["default"]
    assert miss.shape == (1, D) and torch.count_nonzero(miss) == 0
    b = ours.lin.adapter.b
    assert torch.count_nonzero(b) == 0
    with torch.no_grad():
        b.copy_(random_like(b, 4))
        miss.copy_(b[None])
    x = torch.randn(shape)
    got = forward_backward(ours, x, [b])
    ref = forward_backward(theirs, x, [miss])
    assert_all_close(got, [ref[0], ref[1], ref[2][0]])  # miss_block is (1, d)
    # the listing, with b as its own leaf
    b_ref = b.detach().clone().requires_grad_(True)
    xl = x.clone().requires_grad_(True)
    y = paper_listing(xl, plain, b_ref)
    g = torch.linspace(-1.0, 1.5, y.numel()).reshape(y.shape)
    (y * g).sum().backward()
    assert_all_close(got, [y.detach(), xl.grad, b_ref.grad])
    # parameter counts: d per layer, as peft's
    assert count_parameters(ours).trainable == theirs.get_nb_trainable_parameters()[0] == D
    # merge: W0 + b 1ᵀ, bias unchanged
    w_ours, w_theirs = merge_peft(ours).lin, theirs.merge_and_unload().lin
    assert type(w_ours) is nn.Linear and not isinstance(w_ours, AdaptedLinear)
    torch.testing.assert_close(w_ours.weight, w_theirs.weight, **TOL)
    torch.testing.assert_close(w_ours.weight, plain.weight + b.detach()[:, None], **TOL)
    if bias:
        assert torch.equal(w_ours.bias, plain.bias)
    torch.testing.assert_close(w_ours(x), got[0], **TOL)


def test_onelora_forward_is_functional_listing():
    """Oracle: the listing again, via the functional `F.linear` (bias None and given)."""
    from onelora.peft.onelora import onelora_forward

    x, w, bias, b = torch.randn(3, 4, 6), torch.randn(5, 6), torch.randn(5), torch.randn(5)
    for bb in (None, bias):
        ref = F.linear(x, w, bb) + b * x.sum(-1, keepdim=True)
        torch.testing.assert_close(onelora_forward(x, w, bb, b), ref, **TOL)
