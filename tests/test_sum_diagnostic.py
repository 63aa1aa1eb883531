"""The sum diagnostic (scripts/sum_diagnostic.py) on hand-built layers with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from onelora.report.sum_diagnostic import by_type, diagnose, layer_type, sum_statistics


def _layer_model() -> nn.Module:
    model = nn.Sequential()
    model.add_module("block", nn.ModuleList([nn.Linear(2, 3), nn.Linear(3, 2)]))
    return model


def _forward(x: torch.Tensor):  # noqa: ANN202
    return lambda m: m.block[1](torch.relu(m.block[0](x)))


def test_a_centred_input_has_no_spread() -> None:
    # every token's features sum to zero (a LayerNorm's normalised part): s = 1ᵀx is 0 for every token
    x = torch.tensor([[1.0, -1.0, 0.0], [2.0, 0.0, -2.0], [0.5, 0.5, -1.0], [-3.0, 1.0, 2.0]])
    layer = nn.Linear(3, 2)
    stats = diagnose(nn.ModuleDict({"layer": layer}), lambda m: m["layer"](x), ["layer"]).iloc[0]
    assert stats.spread == pytest.approx(0.0, abs=1e-12) and stats.reach == pytest.approx(0.0, abs=1e-12)
    assert stats.tokens == 4 and stats.features == 3


def test_a_positive_input_gives_the_hand_computed_values() -> None:
    # tokens (1,0), (0,1), (2,2): s = 1, 1, 4, mean 2, var 2 (population); per feature var 2/3, covariance 1/3,
    # so tr Σ = 4/3, λ_max = 1 (along (1,1)/√2): spread = √(2 / (4/3)) = √1.5, reach = (2/2)/1 = 1,
    # constant share = 2² / mean(1, 1, 16) = 4/6
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    stats = sum_statistics(x)
    assert stats["spread"] == pytest.approx(math.sqrt(1.5), rel=1e-12)
    assert stats["reach"] == pytest.approx(1.0, rel=1e-12)
    assert stats["const_share"] == pytest.approx(2 / 3, rel=1e-12)
    assert stats["reach_random"] == pytest.approx((4 / 3) / 2 / 1, rel=1e-12)  # tr Σ / k / λ_max
    # a second direction of variance lowers reach: tokens (1,0), (0,1): s constant, Σ = [[.25,-.25],[-.25,.25]]
    assert sum_statistics(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))["reach"] == pytest.approx(0.0, abs=1e-12)


def test_every_token_of_a_batch_counts_and_types_group_layers() -> None:
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 2.0], [1.0, 0.0]]])  # (batch 2, 2 tokens, 2 features)
    model = _layer_model()
    df = diagnose(model, _forward(x), ["block.0", "block.1"]).assign(model="m")
    assert list(df.tokens) == [4, 4] and list(df.features) == [2, 3]
    flat = x.reshape(-1, 2)
    assert df.spread.iloc[0] == pytest.approx(sum_statistics(flat)["spread"])
    assert layer_type("vit.encoder.layer.3.attention.q_proj") == "attention.q_proj"
    assert layer_type("model.layers.11.mlp.down_proj") == "mlp.down_proj" and layer_type("classifier") == "classifier"
    assert list(by_type(df.assign(type="t")).layers) == [2]
