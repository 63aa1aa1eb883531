"""The paper's Figure 9: how well a fixed summation compresses the inputs a full fine-tuning update uses.

For each linear layer, the update ΔW = W_full − W0 (d × k) has principal components in input space: the right
singular vectors v_i of ΔW. A compression vector c is a good rank-1 input projection where |cos(v_1, c)| is
high. Compared: the summation vector 1 (1LoRA), a fixed random vector, and LoRA's learned A (r=1), per layer
type (attention q/k/v projections, MLP first and second layer).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

LAYER_TYPES = {  # name suffixes, checked in this order (ViT's attention.output.dense is not an MLP layer)
    "attention": ("q_proj", "k_proj", "v_proj", "query", "key", "value", "qkv", "to_q", "to_k", "to_v"),
    "other": ("attention.output.dense", "o_proj", "out_proj", "to_out.0", "attn.proj"),
    "mlp_in": ("fc1", "up_proj", "gate_proj", "intermediate.dense", "net.0.proj"),
    "mlp_out": ("fc2", "down_proj", "output.dense", "net.2"),
}
LABELS = {"attention": "QKV proj.", "mlp_in": "MLP L1", "mlp_out": "MLP L2"}


def layer_type(name: str) -> str | None:
    for kind, suffixes in LAYER_TYPES.items():
        if any(name == s or name.endswith("." + s) for s in suffixes):
            return None if kind == "other" else kind
    return None


def principal_alignment(delta: Tensor, vectors: dict[str, Tensor], components: int = 1) -> dict[str, float]:
    """max over the first `components` right singular vectors v_i of ΔW of |cos(v_i, c)|, for each vector c."""
    _, _, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    pcs = vh[:components]  # (components, k), unit rows
    return {name: float((pcs @ (c.double() / c.double().norm())).abs().max()) for name, c in vectors.items()}


def update_alignment(
    base: nn.Module, full: nn.Module, lora: nn.Module | None = None, seed: int = 0, components: int = 1
) -> list[dict]:
    """One row per adapted-kind linear layer: its type and |cos| of ΔW's first PC with 1, random, LoRA's A."""
    from ..peft import AdaptedLinear

    full_weights = {n: m.weight for n, m in full.named_modules() if isinstance(m, nn.Linear)}
    lora_a = {}
    if lora is not None:
        lora_a = {n: m.adapter.lora_A[0] for n, m in lora.named_modules() if isinstance(m, AdaptedLinear)}
    g = torch.Generator().manual_seed(seed)
    rows = []
    for name, module in base.named_modules():
        kind = layer_type(name)
        if kind is None or not isinstance(module, nn.Linear) or name not in full_weights:
            continue
        delta = (full_weights[name].detach() - module.weight.detach()).float()
        if not torch.any(delta):
            continue
        k = delta.shape[1]
        vectors = {"summation": torch.ones(k), "random": torch.randn(k, generator=g)}
        if name in lora_a:
            vectors["lora_A"] = lora_a[name].detach().float()
        rows.append({"layer": name, "type": kind, **principal_alignment(delta, vectors, components)})
    return rows


def alignment_figure(rows: list[dict], title: str = ""):  # -> matplotlib Figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in LABELS if any(r["type"] == k for r in rows)]
    vectors = [v for v in ("summation", "random", "lora_A") if any(v in r for r in rows)]
    fig, ax = plt.subplots(figsize=(2.2 * len(kinds) + 2, 3.6))
    width = 0.8 / max(len(vectors), 1)
    for j, v in enumerate(vectors):
        data = [[r[v] for r in rows if r["type"] == k and v in r] for k in kinds]
        pos = [i + (j - (len(vectors) - 1) / 2) * width for i in range(len(kinds))]
        box = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, manage_ticks=False)
        for patch in box["boxes"]:
            patch.set_facecolor(f"C{j}")
            patch.set_alpha(0.6)
        ax.plot([], [], "s", color=f"C{j}", label={"lora_A": "LoRA's A", "summation": "summation (1LoRA)"}.get(v, v))
    ax.set_xticks(range(len(kinds)), [LABELS[k] for k in kinds])
    ax.set_ylabel("|cos(first PC of ΔW, c)|")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig
