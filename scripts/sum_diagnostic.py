"""Where the sum compresses nothing: per adapted linear layer, how much 1LoRA's s = 1ᵀx varies across tokens.

    python scripts/sum_diagnostic.py [--models vit_digits,llama_tiny,depth_anything_tiny] [--update-reference]

For each model config, applies 1LoRA as a run would (every linear layer the model config targets), feeds one
batch and reports per layer and per layer type: spread (std of 1ᵀx across tokens relative to a random
direction's), reach (the fraction of the best rank-1 direction's input variance the sum passes on) and the
share of s explained by a constant (definitions: onelora.report.sum_diagnostic). The demo's ViT is the one the
suite pre-trained on digits 0-4 (the committed one), fed digits 5-9 test images; the tiny Llama (RMSNorm) and
DINOv2 (Depth Anything's backbone, LayerNorm) have random weights and random inputs: they show what the
normalisation alone does. The real models (minilm_l6, smollm2_135m: make install) are fed real sentences: the
first movie sentences of the test split (onelora.data.movies; fetched on first use) with at least 16 tokens, cut
to 16 (no padding enters the statistics). Each reach is printed beside a random direction's. Writes layers.csv,
by_type.csv, by_type.md and spread.png to results/local/sum_diagnostic (git-ignored) and shows by_type.md beside
the committed results/sum_diagnostic/ (--update-reference: writes there).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ONELORA_ROOT", str(ROOT))

MODELS = "vit_digits,llama_tiny,depth_anything_tiny"  # the real ones: --models minilm_l6,smollm2_135m
TOKENS = 16  # real sentences: the first 16 tokens of those that have as many


def sentence_ids(cfg, n: int):  # noqa: ANN001, ANN201
    """(n, TOKENS) token ids of the first test-split movie sentences with at least TOKENS tokens."""
    import torch
    from transformers import AutoTokenizer

    from onelora.data.movies import split
    from onelora.models.packaged import local_source

    tok = AutoTokenizer.from_pretrained(local_source(cfg.model.tokenizer))
    rows = []
    for text, _ in split(cfg.paths.data_dir, "test"):
        ids = tok(text)["input_ids"]
        if len(ids) >= TOKENS:
            rows.append(ids[:TOKENS])
        if len(rows) == n:
            break
    return torch.tensor(rows)


def batch_forward(cfg, n: int):  # noqa: ANN001, ANN201
    """A function running the model on one batch that fits the model config (seeded)."""
    import torch

    g = torch.Generator().manual_seed(0)
    if cfg.model.name in ("minilm_l6", "smollm2_135m"):  # real weights: real sentences
        ids = sentence_ids(cfg, n)
        return lambda m: m(input_ids=ids)
    if cfg.model.name == "vit_digits":
        from onelora.data.classification import DigitsDataModule

        dm = DigitsDataModule(classes=[5, 6, 7, 8, 9], batch_size=n)
        dm.setup()
        images = dm.val_set.tensors[0][:n]  # the test split of the fine-tuning task
        return lambda m: m(pixel_values=images)
    if cfg.model.kind == "causal_lm":
        ids = torch.randint(0, int(cfg.model.arch.vocab_size), (n, 32), generator=g)
        return lambda m: m(input_ids=ids)
    size = int(cfg.model.get("image_size") or 224)
    images = torch.randn(n, 3, size, size, generator=g)
    return lambda m: m(pixel_values=images)


def diagnose_model(name: str, n: int):  # noqa: ANN201
    import torch
    from hydra import compose, initialize_config_dir

    from onelora.peft import AdaptedLinear
    from onelora.report.sum_diagnostic import diagnose
    from onelora.run.build import build_peft_model
    from onelora.run.train import ensure_pretrained

    torch.manual_seed(0)  # the random-weight configs: the same weights on every run
    task = {"vit_digits": ["task=quickstart"], "minilm_l6": ["task=sentiment"],
            "smollm2_135m": ["task=math", "task.weights_dtype=float32"]}.get(name, [])  # fmt: skip
    overrides = [f"model={name}", "peft=onelora", *task]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
        ensure_pretrained(cfg)  # a re-made ViT (model.pretrained=<cache folder>): pre-trained on first use
        model, _ = build_peft_model(cfg)
    model.eval()
    layers = [n for n, m in model.named_modules() if isinstance(m, AdaptedLinear)]
    df = diagnose(model, batch_forward(cfg, n), layers)
    return df.assign(model=name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=MODELS, help=f"model configs, comma-separated (default {MODELS})")
    ap.add_argument("--batch", type=int, default=64, help="samples in the batch (default 64)")
    ap.add_argument("--out", type=Path, help="output folder (default: results/local/sum_diagnostic)")
    ap.add_argument("--update-reference", action="store_true", help="write the committed results/sum_diagnostic")
    args = ap.parse_args(argv)
    reference = ROOT / "results" / "sum_diagnostic"
    args.out = args.out or (reference if args.update_reference else ROOT / "results" / "local" / "sum_diagnostic")

    import pandas as pd

    from onelora.errors import user_errors
    from onelora.report.sum_diagnostic import by_type, figure
    from onelora.run.logs import quiet_dependencies

    quiet_dependencies()

    try:
        layers = pd.concat([diagnose_model(m, args.batch) for m in args.models.split(",") if m], ignore_index=True)
    except user_errors() as e:
        print(f"sum_diagnostic: {e}", file=sys.stderr)
        return 2
    summary = by_type(layers)
    args.out.mkdir(parents=True, exist_ok=True)
    layers.to_csv(args.out / "layers.csv", index=False, float_format="%.6g")
    summary.to_csv(args.out / "by_type.csv", index=False, float_format="%.6g")
    table = [
        "| model | layer type | layers | spread (min–max) | reach | a random direction's reach | constant share of s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for _, r in summary.iterrows():
        table.append(f"| {r.model} | `{r.type}` | {r.layers} | {r.spread:.3f} ({r.spread_min:.3f}–{r.spread_max:.3f}) "
                     f"| {r.reach:.4f} | {r.reach_random:.4f} | {r.const_share:.3f} |")  # fmt: skip
    (args.out / "by_type.md").write_text("\n".join(table) + "\n")
    figure(summary).savefig(args.out / "spread.png", dpi=110)
    print(f"wrote {args.out}/{{layers.csv, by_type.csv, by_type.md, spread.png}}")
    if args.out.resolve() == reference.resolve():
        print("\n".join(table))
        return 0
    from onelora.report.compare import compare_files

    lines, _ = compare_files(reference / "by_type.md", args.out / "by_type.md")
    print(f"beside the committed {reference.relative_to(ROOT)}/by_type.md:", *lines, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
