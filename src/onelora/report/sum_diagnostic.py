"""Where the sum compresses nothing: how much 1LoRA's compression s = 1ᵀx varies across tokens, per linear layer.

1LoRA adds b·(1ᵀx); LoRA r=1 adds b·(aᵀx) with a learned direction a. Over the tokens t of a batch (every
position of every sample), with Σ the covariance of the layer inputs x_t ∈ R^k (population, ddof 0):

- `spread` = std_t(1ᵀx_t) / sqrt(tr Σ): the std of the input along the unit summation direction 1/√k, relative
  to the RMS std along a random unit direction (E_a[aᵀΣa] = tr Σ / k). 1 for independent features of equal
  variance; 0 when the sum is the same for every token (then 1LoRA adds the same vector b·s to every token: a
  bias, BitFit's function class).
- `reach` = (1ᵀΣ1 / k) / λ_max(Σ): the input-dependent variance 1LoRA's fixed direction passes on, as a fraction
  of what the best single direction passes on (LoRA r=1 can learn the top principal direction). In [0, 1].
- `reach_random` = (tr Σ / k) / λ_max(Σ): the reach of a random unit direction (its expectation over directions),
  the yardstick for `reach`: a sum that reaches less than this is worse than a direction drawn at random.
- `const_share` = mean_t(s)² / mean_t(s²): the share of s's second moment a constant explains.

Why look: after a LayerNorm the normalised part sums to zero over the features, so 1ᵀx = Σγᵢx̂ᵢ + Σβᵢ varies
only through γ's deviation from a constant; after RMSNorm (no centring), a GELU or attention it need not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

LAYER_INDEX = re.compile(r"^(.*?\.)?\d+\.")  # everything up to the block index: "vit.encoder.layer.3."


def sum_statistics(x: Tensor) -> dict[str, float]:
    """spread, reach and const_share of the inputs `x` (..., k), every leading index a token; float64."""
    x = x.detach().reshape(-1, x.shape[-1]).double()
    k = x.shape[1]
    s = x.sum(dim=1)
    centred = x - x.mean(dim=0)
    cov = centred.T @ centred / x.shape[0]
    trace = float(cov.trace())
    var_sum = float(s.var(unbiased=False))
    top = float(torch.linalg.eigvalsh(cov)[-1]) if k else 0.0
    second = float((s * s).mean())
    return {
        "spread": math.sqrt(var_sum / trace) if trace > 0 else math.nan,
        "reach": var_sum / k / top if top > 0 else math.nan,
        "reach_random": trace / k / top if top > 0 else math.nan,
        "const_share": float(s.mean()) ** 2 / second if second > 0 else math.nan,
        "tokens": x.shape[0],
        "features": k,
    }


def layer_type(name: str) -> str:
    """The module's name inside its block (`attention.attention.query`, `mlp.down_proj`), or its name if unblocked."""
    return LAYER_INDEX.sub("", name)


def layer_inputs(model: nn.Module, forward: Callable[[nn.Module], Any], layers: list[str]) -> dict[str, Tensor]:
    """The inputs of the named linear layers during one forward (no gradients)."""
    seen: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, a, out, n=n: seen.__setitem__(n, a[0].detach()))
             for n in layers]  # fmt: skip
    try:
        with torch.no_grad():
            forward(model)
    finally:
        for h in hooks:
            h.remove()
    return seen


def diagnose(model: nn.Module, forward: Callable[[nn.Module], Any], layers: list[str]) -> pd.DataFrame:
    """One row per layer (in model order): name, type, spread, reach, const_share, tokens, features."""
    inputs = layer_inputs(model, forward, layers)
    rows = [{"layer": n, "type": layer_type(n), **sum_statistics(inputs[n])} for n in layers if n in inputs]
    return pd.DataFrame(rows)


def by_type(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, layer type): mean and range of spread and reach, mean const_share, the layer count."""
    keys = [k for k in ("model", "type") if k in df]
    out = df.groupby(keys, sort=False).agg(
        layers=("layer", "size"),
        spread=("spread", "mean"),
        spread_min=("spread", "min"),
        spread_max=("spread", "max"),
        reach=("reach", "mean"),
        reach_random=("reach_random", "mean"),
        const_share=("const_share", "mean"),
    )
    return out.reset_index()


def figure(summary: pd.DataFrame) -> Any:
    """Bars of the mean spread per layer type (range as error bar), one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(summary["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        sel = summary[summary.model == model]
        y = sel.spread.to_numpy()
        err = [y - sel.spread_min.to_numpy(), sel.spread_max.to_numpy() - y]
        ax.bar(range(len(sel)), y, yerr=err, color="tab:blue", capsize=3)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(sel)), [t.replace("attention.", "attn.") for t in sel["type"]], rotation=40,
                      ha="right", fontsize=7)  # fmt: skip
        ax.set_title(model, fontsize=9)
        ax.set_ylim(0, max(1.2, float(sel.spread_max.max()) * 1.1))
    axes[0][0].set_ylabel("spread of 1ᵀx across tokens\n(1 = as a random direction, 0 = constant)", fontsize=8)
    fig.tight_layout()
    return fig
