"""`make bench`'s width sweep: how the cost of 1LoRA and LoRA r=1 over BitFit grows with the layer width.

One block of each paper model at its real width and its task's tokens per sample (one image, one 512-token
sequence), and a Llama block from hidden 256 to 4096 (LLaMA-2-7B's block; MLP 2.6875 x hidden as 7B's 11008).
Each is measured by `run_benchmark` (the same clock, meter and op counter as the stacks' tables) for BitFit,
1LoRA and LoRA r=1 of ours and HF peft's LoRA r=1 and MiSS r=1 (the same math as 1LoRA), ratios to BitFit of
the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .bench import BenchModel, llama_stack, run_benchmark, vit_stack

SWEEP_OURS = ["bitfit", "onelora", "lora"]
SWEEP_PEERS = ["lora", "miss"]
LLAMA_WIDTHS = [256, 512, 1024, 2048, 4096]


def dinov2_block(hidden: int = 1024, h: int = 392, w: int = 518) -> BenchModel:
    """DINOv2-L's block (Depth Anything-L's encoder) at the MDE input size, 28 x 37 patches of 14 + [CLS]."""
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=hidden // 64,
                       image_size=max(h, w), patch_size=14)  # fmt: skip
    return BenchModel(
        f"dinov2_h{hidden}_l1_b1x{h}x{w}",
        lambda: Dinov2Model(cfg),
        lambda dev, dt: {"pixel_values": torch.randn(1, 3, h, w, device=dev, dtype=dt)},
        lambda out: out.last_hidden_state.float().pow(2).mean(),
    )


def dit_block(heads: int = 16, head_dim: int = 72, latent: int = 32) -> BenchModel:
    """DiT-XL/2's block at 256² (a 32² latent in patches of 2: 256 tokens of 1152), adaLN-zero, one class label."""
    from diffusers import DiTTransformer2DModel

    def build() -> torch.nn.Module:
        return DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4,
                                     out_channels=8, num_layers=1, sample_size=latent, patch_size=2,
                                     num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
                                     activation_fn="gelu-approximate", attention_bias=True,
                                     norm_elementwise_affine=False)  # fmt: skip

    def inputs(dev: torch.device, dt: torch.dtype) -> dict[str, torch.Tensor]:
        return {"hidden_states": torch.randn(1, 4, latent, latent, device=dev, dtype=dt),
                "timestep": torch.tensor([500], device=dev), "class_labels": torch.tensor([3], device=dev)}  # fmt: skip

    return BenchModel(f"dit_h{heads * head_dim}_l1_b1x{latent * latent // 4}", build, inputs,
                      lambda out: out.sample.float().pow(2).mean())  # fmt: skip


def llama_block(hidden: int, intermediate: int | None = None, heads: int | None = None, seq: int = 512) -> BenchModel:
    """One Llama block, one sequence of `seq` tokens; LLaMA-2-13B's MLP (13824) is not 2.6875 x 5120."""
    spec = llama_stack(hidden, 1, 1, seq)
    if intermediate is None and heads is None:
        return spec
    from transformers import LlamaConfig, LlamaModel

    heads = heads or max(1, hidden // 128)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate or int(hidden * 2.6875), num_hidden_layers=1,
                      num_attention_heads=heads, num_key_value_heads=heads, vocab_size=1000,
                      max_position_embeddings=max(seq, 128))  # fmt: skip
    return BenchModel(f"llama_h{hidden}_l1_b1x{seq}", lambda: LlamaModel(cfg), spec.inputs, spec.loss)


# The paper's models, one block each, at their real widths (name -> (label, width, tokens, builder)).
PAPER_BLOCKS: dict[str, tuple[str, int, int, Callable[[], BenchModel]]] = {
    "vit_b16": ("ViT-B/16 224²", 768, 197, lambda: vit_stack(768, 1, 1, 224)),
    "dinov2_l": ("DINOv2-L 392×518", 1024, 1037, dinov2_block),
    "dit_xl2": ("DiT-XL/2 256²", 1152, 256, dit_block),
    "llama2_7b": ("LLaMA-2-7B", 4096, 512, lambda: llama_block(4096, 11008, 32)),
    "llama2_13b": ("LLaMA-2-13B", 5120, 512, lambda: llama_block(5120, 13824, 40)),
}


def sweep_specs(blocks: list[str], llama_widths: list[int]) -> list[tuple[str, str, int, int, BenchModel]]:
    """(group, label, width, tokens, spec) of every point; the 7B block is also the Llama sweep's 4096 point."""
    points = [("paper", *PAPER_BLOCKS[b][:3], PAPER_BLOCKS[b][3]()) for b in blocks]
    for width in llama_widths:
        if width == 4096 and "llama2_7b" in blocks:
            continue
        spec = llama_block(width) if width != 4096 else PAPER_BLOCKS["llama2_7b"][3]()
        points.append(("llama", f"Llama block h{width}", width, 512, spec))
    return points


def width_sweep(
    blocks: list[str],
    llama_widths: list[int],
    repeats: int = 5,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for group, label, width, tokens, spec in sweep_specs(blocks, llama_widths):
        log(f"width sweep: {label} ({spec.name})")
        for r in run_benchmark(spec, SWEEP_OURS, SWEEP_PEERS, repeats, device, dtype, estimate=False, infer=False):
            rows.append({"group": group, "block": label, "width": width, "tokens": tokens, **r})
    return rows


SERIES = [("onelora", "onelora", "1LoRA (ours)"), ("onelora", "lora", "LoRA r=1 (ours)"),
          ("hf_peft", "lora", "LoRA r=1 (HF peft)"), ("hf_peft", "miss", "MiSS r=1 (HF peft)")]  # fmt: skip


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """One line per block; each series' cell: step time ÷ BitFit / saved activations ÷ BitFit / ops above BitFit."""
    head = "| block | width | tokens | BitFit step [ms] | " + " | ".join(s[2] for s in SERIES) + " |"
    lines = [head, "|---|---:|---:|---:|" + "---:|" * len(SERIES)]
    for block in dict.fromkeys(r["block"] for r in rows):
        by = {(r["impl"], r["method"]): r for r in rows if r["block"] == block}
        bit = by["onelora", "bitfit"]
        cells = []
        for impl, method, _ in SERIES:
            r = by.get((impl, method))
            cells.append("–" if r is None else f"{r['step_ratio_bitfit']:.3f} / {r['saved_ratio_bitfit']:.3f} / "
                                               f"{r['ops_above_bitfit']:+d}")  # fmt: skip
        lines.append(
            f"| {block} | {bit['width']} | {bit['tokens']} | {bit['step_ms']:.1f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def sweep_plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Three panels against width: step time, saved activations (÷ BitFit) and ops above BitFit per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("step_ratio_bitfit", "step time ÷ BitFit"), ("saved_ratio_bitfit", "saved activations ÷ BitFit"),
              ("ops_above_bitfit", "ops per step above BitFit")]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    markers = {"paper": "o", "llama": "s"}
    for ax, (key, label) in zip(axes, panels):
        for i, (impl, method, name) in enumerate(SERIES):
            color, style = f"C{i}", "--" if impl == "hf_peft" else "-"  # dashed: HF peft (overlaps ours where equal)
            pts = [r for r in rows if r["impl"] == impl and r["method"] == method]
            line = sorted((r["width"], r[key]) for r in pts if r["group"] == "llama" or r["block"] == "LLaMA-2-7B")
            if line:
                ax.plot(*zip(*line), color=color, ls=style, label=name, lw=1.5)
            for r in pts:
                ax.scatter(r["width"], r[key], color=color, marker=markers[r["group"]], s=28, zorder=3)
        if key == "step_ratio_bitfit":
            for r in rows:
                if r["group"] == "paper" and r["impl"] == "onelora" and r["method"] == "onelora":
                    ax.annotate(
                        r["block"], (r["width"], r[key]), fontsize=7, xytext=(3, -10), textcoords="offset points"
                    )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden width")
        ax.set_ylabel(label)
        if key != "ops_above_bitfit":
            ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{title}\nlines and squares: a Llama block, 512 tokens; dots: one block of each paper model", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
