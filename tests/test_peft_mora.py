"""MoRA types 1 and 6 against the official kongds/MoRA semantics (notes: reference/mora-and-task-recipes.md §1).

Oracles: hand-computed tiny layers; an element-by-element float64 construction of ΔW from
the spec (wrap-around padding, strided sum / RoPE by chunk index, tiling); the r̂ table of
the notes; the paper's LLaMA-2-7B parameter counts; and 1LoRA for r̂ = 1.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onelora.peft import apply_peft, count_parameters, merge_peft
from onelora.peft.mora import mora_rank
from onelora.peft.onelora import onelora_forward

TOL = {"atol": 1e-5, "rtol": 1e-5}


class OneLinear(nn.Module):
    def __init__(self, k: int, d: int, bias: bool = True) -> None:
        super().__init__()
        self.lin = nn.Linear(k, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def mora_model(method: str, k: int, d: int, rank_rule: str = "paper", m: torch.Tensor | None = None, seed: int = 0):
    """A one-layer model with MoRA on it and M set to `m` (default: random nonzero)."""
    torch.manual_seed(seed)
    model = apply_peft(OneLinear(k, d), method, target_modules=["lin"], rank_rule=rank_rule)
    ad = model.lin.adapter
    with torch.no_grad():
        ad.M.copy_(torch.randn(ad.r, ad.r) if m is None else m)
    return model


def reference_delta_weight(mora_type: int, m: torch.Tensor, k: int, d: int) -> torch.Tensor:
    """ΔW entry by entry (float64) from the kongds/MoRA definition.

    Padded input position i ∈ [0, n·r̂) reads feature i mod k. Type 1: output o is
    (M c)[o mod r̂] with c[j] = Σ_{i ≡ j (mod r̂)} x_pad[i]. Type 6: output o is entry
    a = q mod r̂ of M x̃_g, g = q // r̂, q = o mod (n·r̂), where x̃_g is chunk g rotated
    RoPE-style by angle g·θ_(c mod r̂/2), θ_i = 10000^(-2i/r̂).
    """
    m = m.double()
    r = m.shape[0]
    n = math.ceil(k / r)
    dw = torch.zeros(d, k, dtype=torch.float64)
    for o in range(d):
        if mora_type == 1:
            for i in range(n * r):
                dw[o, i % k] += m[o % r, i % r]
            continue
        q = o % (n * r)
        g, a, h = q // r, q % r, r // 2
        for c in range(r):
            angle = g * 10000 ** (-2 * (c % h) / r)
            dw[o, (g * r + c) % k] += m[a, c] * math.cos(angle)
            # rot_half(v)[c] = -v[c + h] for c < h, v[c - h] otherwise
            partner, sign = (c + h, -1.0) if c < h else (c - h, 1.0)
            dw[o, (g * r + partner) % k] += m[a, c] * sign * math.sin(angle)
    return dw


# (k, d): k < d, k = d, k > d, k not divisible by r̂, r̂ > 2k (padding wraps around more than once)
SHAPES = [(6, 20), (16, 16), (40, 9), (13, 13), (11, 30), (50, 7), (2, 40)]


@pytest.mark.parametrize("rank_rule", ["paper", "official"])
@pytest.mark.parametrize("k,d", SHAPES)
@pytest.mark.parametrize("method", ["mora1", "mora6"])
def test_forward_delta_equals_delta_weight(method, k, d, rank_rule):
    """Oracles: x @ delta_weight().T and the element-wise spec ΔW; merge gives the same layer."""
    model = mora_model(method, k, d, rank_rule)
    lin, ad = model.lin, model.lin.adapter
    expected_r = mora_rank(k, d, 1, ad.mora_type, rank_rule)
    assert ad.r == expected_r and ad.M.shape == (expected_r, expected_r)
    dw = ad.delta_weight(lin.weight)
    ref = reference_delta_weight(ad.mora_type, ad.M.detach(), k, d)
    torch.testing.assert_close(dw.double(), ref, **TOL)
    for shape in [(4, k), (2, 3, k)]:
        x = torch.randn(shape)
        torch.testing.assert_close(ad.delta(x), x @ dw.T, **TOL)
        torch.testing.assert_close(model(x), F.linear(x, lin.weight, lin.bias) + (x.double() @ ref.T).float(), **TOL)
    x = torch.randn(3, k)
    y = model(x)
    merged = merge_peft(model).lin
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged(x), y, **TOL)


def test_type1_by_hand_k5_d3():
    """Hand computation: k=5, d=3, r̂=round(√3)=2, M=[[1,2],[3,4]].

    x_pad = [x0 x1 x2 x3 x4 x0] (wrap-around), chunks [x0 x1] [x2 x3] [x4 x0],
    c = [x0+x2+x4, x1+x3+x0], y = M c, out = [y0, y1, y0] (tiled to d=3).
    """
    model = mora_model("mora1", 5, 3, "paper", m=torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    ad = model.lin.adapter
    assert ad.r == 2
    expected = torch.tensor([[3.0, 2, 1, 2, 1], [7, 4, 3, 4, 3], [3, 2, 1, 2, 1]])
    torch.testing.assert_close(ad.delta_weight(model.lin.weight), expected)
    x = torch.tensor([[1.0, 10, 100, 1000, 10000]])
    c0, c1 = 1 + 100 + 10000, 10 + 1000 + 1
    y0, y1 = 1 * c0 + 2 * c1, 3 * c0 + 4 * c1
    torch.testing.assert_close(ad.delta(x), torch.tensor([[y0, y1, y0]], dtype=torch.float32))


def test_type6_by_hand_k6_d20():
    """Hand computation: k=6, d=20, r̂=round(√20)=4 (even), two chunks, pad 2.

    chunk 0 = [x0 x1 x2 x3] (position 0: no rotation); chunk 1 = [x4 x5 x0 x1] =: [a b c e]
    rotated at position 1 with θ = (1, 10000^(-1/2) = 0.01):
    x̃1 = [a cos1 - c sin1, b cos.01 - e sin.01, c cos1 + a sin1, e cos.01 + b sin.01];
    out = tile([M x0..3, M x̃1], to 20).
    """
    torch.manual_seed(1)
    m = torch.randn(4, 4, dtype=torch.float64)
    model = mora_model("mora6", 6, 20, "paper", m=m.float())
    assert model.lin.adapter.r == 4
    x = torch.randn(3, 6, dtype=torch.float64)
    a, b, c, e = x[:, 4], x[:, 5], x[:, 0], x[:, 1]
    c1, s1, c2, s2 = math.cos(1.0), math.sin(1.0), math.cos(0.01), math.sin(0.01)
    rot1 = torch.stack([a * c1 - c * s1, b * c2 - e * s2, c * c1 + a * s1, e * c2 + b * s2], dim=-1)
    flat = torch.cat([x[:, :4] @ m.T, rot1 @ m.T], dim=-1)  # (3, 8)
    expected = flat[:, torch.arange(20) % 8]
    torch.testing.assert_close(model.lin.adapter.delta(x.float()), expected.float(), **TOL)
    torch.testing.assert_close(model.lin.adapter.cos[1], torch.tensor([c1, c2, c1, c2], dtype=torch.float32))
    torch.testing.assert_close(model.lin.adapter.sin[1], torch.tensor([s1, s2, s1, s2], dtype=torch.float32))


# the notes' table (kongds/MoRA `update_layer`): k→d: (type 1, type 6) at r=1 and at r=8
OFFICIAL_TABLE = {
    (4096, 4096): ((91, 90), (256, 256)),
    (4096, 11008): ((123, 122), (348, 348)),
    (768, 768): ((39, 38), (111, 110)),
    (768, 3072): ((62, 62), (175, 174)),
    (1024, 1024): ((45, 44), (128, 128)),
    (1024, 4096): ((72, 72), (202, 202)),
    (1152, 1152): ((48, 48), (136, 136)),
    (1152, 4608): ((76, 76), (215, 214)),
}


@pytest.mark.parametrize("shape", list(OFFICIAL_TABLE))
def test_rank_official_matches_table(shape):
    """Oracle: the r̂ table of the notes (official rule r̂ = round(√((k+d)·r)), type 6 even)."""
    k, d = shape
    for rank, (t1, t6) in zip((1, 8), OFFICIAL_TABLE[shape]):
        assert mora_rank(k, d, rank, 1, "official") == t1
        assert mora_rank(k, d, rank, 6, "official") == t6


@pytest.mark.parametrize("d", [3, 768, 1024, 3072, 4096, 11008])
def test_rank_paper_is_round_sqrt_d(d):
    """Oracle: the paper's rule r̂ = round(√d) (type 6 rounded down to even), whatever k."""
    r1 = round(math.sqrt(d))
    for k in (5, 4096):
        assert mora_rank(k, d, 1, 1, "paper") == r1
        assert mora_rank(k, d, 1, 6, "paper") == r1 - r1 % 2


def test_paper_counts_llama2_7b():
    """Oracle: the paper's MoRA counts for LLaMA-2-7B, 1,360,960 (type 1) and 1,347,584 (type 6)."""
    h, ff, layers = 4096, 11008, 32
    shapes = [(h, h)] * 4 + [(h, ff)] * 2 + [(ff, h)]  # q k v o, gate up, down
    for mora_type, total in ((1, 1_360_960), (6, 1_347_584)):
        assert layers * sum(mora_rank(k, d, 1, mora_type, "paper") ** 2 for k, d in shapes) == total


@pytest.mark.parametrize("method", ["mora1", "mora6"])
def test_trainable_count_is_r_hat_squared(method):
    """Oracle: r̂² trainable parameters per layer, M zero at init."""
    model = apply_peft(OneLinear(13, 30), method, target_modules=["lin"], rank_rule="official")
    r = mora_rank(13, 30, 1, 1 if method == "mora1" else 6, "official")
    assert count_parameters(model).trainable == r * r
    assert torch.count_nonzero(model.lin.adapter.M) == 0


def test_type1_rank1_is_onelora():
    """Oracle: 1LoRA. With r̂ = 1 (d=2, paper rule) type 1 is W0 x + β + m·1 (1ᵀx)."""
    model = mora_model("mora1", 7, 2, "paper", m=torch.tensor([[0.7]]))
    assert model.lin.adapter.r == 1
    x = torch.randn(2, 3, 7)
    ref = onelora_forward(x, model.lin.weight, model.lin.bias, torch.full((2,), 0.7))
    torch.testing.assert_close(model(x), ref, **TOL)


def test_bad_rank_rule():
    with pytest.raises(ValueError, match="rank_rule"):
        apply_peft(OneLinear(4, 4), "mora1", rank_rule="nope")
