"""The paper's Figure 11 from classification runs: per-sample validation error and calibration per method.

    python scripts/calibration.py logs/multiruns/cls_cifar10 --out results/fig11 [--methods full,lora,onelora]

Reads every `predictions.pt` (written by classification runs) with its `result.json`; writes calibration.png
and calibration.csv (method, samples, accuracy, ECE, median log10 cross-entropy).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from onelora.report.calibration import calibration_figure, expected_calibration_error, load_predictions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories to scan")
    ap.add_argument("--out", type=Path, default=Path("results/fig11"))
    ap.add_argument("--methods", default="", help="comma-separated subset, in this order (default: all found)")
    ap.add_argument("--bins", type=int, default=15)
    args = ap.parse_args(argv)
    duplicates: list[Path] = []
    preds = load_predictions(args.runs, duplicates)
    if duplicates:  # the same run found twice would double its weight in the pooled histogram and ECE
        print(f"calibration: counted once: {len(duplicates)} run(s) identical to another found (same method, seed "
              f"and predictions): {', '.join(map(str, duplicates))}")  # fmt: skip
    if args.methods:
        wanted = [m for m in args.methods.split(",") if m]
        missing = [m for m in wanted if m not in preds]
        if missing:  # said, not dropped silently: the figure shows only what was found
            print(f"calibration: no run with predictions.pt for {', '.join(missing)} under "
                  f"{', '.join(map(str, args.runs))} (found: {', '.join(preds) or 'none'})", file=sys.stderr)  # fmt: skip
        preds = {m: preds[m] for m in wanted if m in preds}
    if not preds:
        print(f"calibration: no predictions.pt with a result.json under {', '.join(map(str, args.runs))}; "
              "classification runs write them at the end of fitting", file=sys.stderr)  # fmt: skip
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = ["method,samples,accuracy,ece,median_log10_ce"]
    for m, d in preds.items():
        ece = expected_calibration_error(d["confidence"], d["correct"], args.bins)
        med = float(np.median(np.log10(np.maximum(d["loss"], 1e-12))))
        rows.append(f"{m},{len(d['loss'])},{d['correct'].mean():.6f},{ece:.6f},{med:.4f}")
        print(f"{m:>24}: {len(d['loss'])} samples, accuracy {100 * d['correct'].mean():.2f}%, ECE {100 * ece:.2f}%")
    (args.out / "calibration.csv").write_text("\n".join(rows) + "\n")
    calibration_figure(preds, args.bins).savefig(args.out / "calibration.png", dpi=110)
    print(f"wrote {args.out / 'calibration.png'} and {args.out / 'calibration.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
