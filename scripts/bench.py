"""`make bench`: training cost of every method (ours and HF peft's) as ratios to BitFit, on a ViT and a Llama stack.

    python scripts/bench.py                       # the two stacks, 4-bit Llama, width sweep: ~10 min on 2 CPU cores
    python scripts/bench.py --device cuda --dtype bfloat16     # make bench DEVICE=cuda DTYPE=bfloat16
    python scripts/bench.py --models widths --blocks llama2_7b --widths 256,1024    # part of the width sweep
    python scripts/bench.py --models llama --compile bitfit,onelora   # + rows under torch.compile (minutes to compile)
    python scripts/bench.py --layers              # one linear layer: BitFit, the paper's listing, merged-weight, ours
    python scripts/bench.py --models qlora        # only the 4-bit (bitsandbytes NF4) Llama stack: 1LoRA vs LoRA r=1

Writes results/bench/<model>.csv and .md (the tables the README shows; widths.{csv,md,png} for the sweep) and
prints them. A value it cannot use (an unknown model, method, block or device, a width no model takes) is one line
naming the valid choices, exit 2.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
import sys
from pathlib import Path

import torch

from onelora.costs.bench import (
    OURS,
    PEERS,
    depth_stack,
    layer_benchmark,
    llama_stack,
    markdown_table,
    qlora_benchmark,
    qlora_table,
    run_benchmark,
    vit_stack,
)
from onelora.costs.bench_widths import LLAMA_WIDTHS, PAPER_BLOCKS, sweep_plot, sweep_table, width_sweep
from onelora.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def machine(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


MODELS = ["vit", "llama", "depth", "qlora", "widths"]


def _choices(value: str, valid: list[str], flag: str) -> list[str]:
    """The comma-separated names of `value`; an unknown one is a UserError naming the valid choices."""
    names = [n for n in value.split(",") if n]
    bad = [n for n in names if n not in valid]
    if bad:
        raise UserError(f"{flag}: unknown {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")
    return names


def _widths(value: str) -> list[int]:
    try:
        widths = [int(w) for w in value.split(",") if w]
    except ValueError:
        raise UserError(f"--widths {value!r}: comma-separated integers, e.g. 256,512,1024") from None
    for w in widths:
        _check_width("--widths", w, head_dim_even=True)
    return widths


def _check_width(flag: str, hidden: int, head_dim_even: bool = False) -> None:
    """The stacks use hidden // 64 heads: the width must split into them (and rotary embeddings need even heads)."""
    heads = max(1, hidden // 64)
    if hidden < 1 or hidden % heads or (head_dim_even and (hidden // heads) % 2):
        raise UserError(f"{flag} {hidden}: no model takes this width (hidden // 64 heads of an even size); "
                         f"use a multiple of 64, e.g. 256, 512, 4096")  # fmt: skip


def _check_device(device: str) -> None:
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError):
        valid = "cpu, cuda" if torch.cuda.is_available() else "cpu (torch finds no CUDA device here)"
        raise UserError(f"--device {device!r} is not available; valid: {valid}") from None


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except UserError as e:  # a value the user gave that cannot be used: one line, no traceback
        print(f"bench: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vit,llama,qlora,widths", help=f"of {', '.join(MODELS)} (qlora: 4-bit Llama)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", default=",".join(OURS), help="ours (bitfit is always included)")
    ap.add_argument("--peers", default=",".join(PEERS), help="HF peft's methods; empty for none")
    ap.add_argument("--vit-hidden", type=int, default=384)
    ap.add_argument("--vit-layers", type=int, default=12)
    ap.add_argument("--vit-batch", type=int, default=4)
    ap.add_argument("--vit-image", type=int, default=224)
    ap.add_argument("--llama-hidden", type=int, default=512)
    ap.add_argument("--llama-layers", type=int, default=4)
    ap.add_argument("--llama-batch", type=int, default=2)
    ap.add_argument("--llama-seq", type=int, default=256)
    ap.add_argument(
        "--depth-data", default="kitti", help="--models depth: a DINOv2 stack at this data set's input size"
    )
    ap.add_argument("--depth-batch", type=int, default=2)
    ap.add_argument("--blocks", default=",".join(PAPER_BLOCKS), help="--models widths: the paper models' blocks")
    ap.add_argument("--widths", default=",".join(map(str, LLAMA_WIDTHS)), help="--models widths: Llama block widths")
    ap.add_argument("--compile", default="", help="ours timed again under torch.compile(fullgraph=True)")
    ap.add_argument("--layers", action="store_true", help="the per-layer comparison of 1LoRA implementations")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args(argv)
    models = _choices(args.models, MODELS, "--models")
    methods = list(dict.fromkeys(["bitfit", *_choices(args.methods, OURS, "--methods")]))
    peers = _choices(args.peers, PEERS, "--peers")
    compiled = _choices(args.compile, OURS, "--compile")
    blocks = _choices(args.blocks, list(PAPER_BLOCKS), "--blocks")
    widths = _widths(args.widths)
    _check_width("--vit-hidden", args.vit_hidden)
    _check_width("--llama-hidden", args.llama_hidden, head_dim_even=True)
    if args.vit_image < 16:
        raise UserError(f"--vit-image {args.vit_image}: smaller than one 16-pixel patch; use e.g. 224")
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: at least 1 (the README's tables use 5)")
    _check_device(args.device)
    # bitsandbytes (imported by HF peft and the qlora case) notes on import an optional CPU kernel it lacks
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if "widths" in models and "dit_xl2" in blocks:
        from diffusers.utils import logging as diffusers_logging

        # diffusers warns on `.to(dtype)` of a DiT built from a config that no module asks for fp32 (an empty list)
        diffusers_logging.set_verbosity_error()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine(args.device)}")
    if args.layers:
        rows = layer_benchmark(
            [(788, 384, 384), (788, 384, 1536), (788, 1536, 384), (512, 512, 1376), (512, 1376, 512)]
        )
        for r in rows:
            print(
                f"tokens={r['tokens']:5d} k={r['k']:5d} d={r['d']:5d} {r['variant']:>14}: {r['ms']:7.2f} ms  x{r['ratio_bitfit']:.3f}"
            )
        _write_csv(out / "layers.csv", rows)
        return 0
    dtype = getattr(torch, args.dtype)
    specs = {
        "vit": lambda: vit_stack(args.vit_hidden, args.vit_layers, args.vit_batch, args.vit_image),
        "llama": lambda: llama_stack(args.llama_hidden, args.llama_layers, args.llama_batch, args.llama_seq),
        "depth": lambda: depth_stack(args.depth_data, args.vit_hidden, args.vit_layers, args.depth_batch),
    }
    for name in models:
        if name == "qlora":
            _qlora(args, out)
            continue
        if name == "widths":
            _widths_sweep(args, blocks, widths, dtype, out)
            continue
        spec = specs[name]()
        rows = run_benchmark(spec, methods, peers, args.repeats, args.device, dtype, compiled=compiled)
        _write_csv(out / f"{spec.name}.csv", rows)
        table = f"{spec.name}, {args.dtype}, {args.repeats} interleaved repeats; {machine(args.device)}\n\n{markdown_table(rows)}\n"
        (out / f"{spec.name}.md").write_text(table)
        print(f"\n{table}")
    return 0


def _widths_sweep(
    args: argparse.Namespace, blocks: list[str], widths: list[int], dtype: torch.dtype, out: Path
) -> None:
    rows = width_sweep(blocks, widths, args.repeats, args.device, dtype)
    _write_csv(out / "widths.csv", rows)
    load = f"; load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""
    note = f"{args.dtype}, {args.repeats} interleaved repeats per block; {machine(args.device)}{load}"
    table = (f"Width sweep (one block each; cells: step time ÷ BitFit / saved activations ÷ BitFit / ops per step "
             f"above BitFit), {note}\n\n{sweep_table(rows)}\n")  # fmt: skip
    (out / "widths.md").write_text(table)
    sweep_plot(rows, out / "widths.png", f"1LoRA and LoRA r=1 against BitFit by width; {note}")
    print(f"\n{table}")


def _qlora(args: argparse.Namespace, out: Path) -> None:
    """1LoRA vs LoRA r=1 on the Llama stack with 4-bit (NF4) weights, where bitsandbytes runs."""
    try:
        import bitsandbytes
    except ImportError:
        print("bench: bitsandbytes is not installed; the 4-bit (qlora) comparison is skipped")
        return
    spec = llama_stack(args.llama_hidden, args.llama_layers, args.llama_batch, args.llama_seq)
    rows = qlora_benchmark(spec, repeats=args.repeats)
    _write_csv(out / f"{rows[0]['model']}.csv", rows)
    table = (
        f"{rows[0]['model']}: Llama stack, weights NF4 (bitsandbytes {bitsandbytes.__version__}), fp32 compute and "
        f"adapters, {args.repeats} interleaved repeats; {machine('cpu')}\n\n{qlora_table(rows)}\n"
    )
    (out / f"{rows[0]['model']}.md").write_text(table)
    print(f"\n{table}")


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
