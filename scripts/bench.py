"""`make bench`: training cost of every method (ours and HF peft's) as ratios to BitFit, on a ViT and a Llama stack.

    python scripts/bench.py                       # defaults: ~3-4 min on 2 CPU cores
    python scripts/bench.py --device cuda --dtype bfloat16 --vit-hidden 768 --llama-hidden 4096 --llama-layers 2
    python scripts/bench.py --layers              # one linear layer: BitFit, the paper's listing, merged-weight, ours
    python scripts/bench.py --models qlora        # only the 4-bit (bitsandbytes NF4) Llama stack: 1LoRA vs LoRA r=1

Writes results/bench/<model>.csv and .md (the table the README shows) and prints them.
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

from onelora.bench import (
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

ROOT = Path(__file__).resolve().parents[1]


def machine(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vit,llama,qlora", help="qlora: the Llama stack quantized to 4 bits")
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
    ap.add_argument("--layers", action="store_true", help="the per-layer comparison of 1LoRA implementations")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args(argv)
    # bitsandbytes (imported by HF peft and the qlora case) notes on import an optional CPU kernel it lacks
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
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
    methods = list(dict.fromkeys(["bitfit", *[m for m in args.methods.split(",") if m]]))
    peers = [m for m in args.peers.split(",") if m]
    dtype = getattr(torch, args.dtype)
    specs = {
        "vit": lambda: vit_stack(args.vit_hidden, args.vit_layers, args.vit_batch, args.vit_image),
        "llama": lambda: llama_stack(args.llama_hidden, args.llama_layers, args.llama_batch, args.llama_seq),
        "depth": lambda: depth_stack(args.depth_data, args.vit_hidden, args.vit_layers, args.depth_batch),
    }
    for name in args.models.split(","):
        if name == "qlora":
            _qlora(args, out)
            continue
        if name not in specs:
            print(f"bench: unknown model {name!r}; valid: {', '.join(specs)}, qlora", file=sys.stderr)
            return 2
        spec = specs[name]()
        rows = run_benchmark(spec, methods, peers, args.repeats, args.device, dtype)
        _write_csv(out / f"{spec.name}.csv", rows)
        table = f"{spec.name}, {args.dtype}, {args.repeats} interleaved repeats; {machine(args.device)}\n\n{markdown_table(rows)}\n"
        (out / f"{spec.name}.md").write_text(table)
        print(f"\n{table}")
    return 0


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
