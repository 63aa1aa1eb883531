"""`make costs EXP=<manifest>`: the paper's time and memory columns, measured on random weights (see onelora.costs).

    python scripts/costs.py fig4                         # on a GPU: full size, the experiment's shapes and precision
    python scripts/costs.py fig6 --device cpu --layers 2 --set data.module.batch_size=2    # reduced, on CPU
    python scripts/costs.py table2 --methods onelora,lora --steps 10

Writes results/costs/<manifest>.{csv,md,png} (or --out) and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", help="an experiments/ manifest: table2, fig3, fig4, fig5, fig6, ...")
    ap.add_argument("--methods", default="", help="comma-separated subset of the manifest's methods")
    ap.add_argument("--steps", type=int, default=10, help="measured optimizer steps per method")
    ap.add_argument("--warmup", type=int, default=2, help="steps run first and not timed")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--layers", type=int, default=None, help="fewer blocks (reduced configuration)")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for every run (repeatable), e.g. model=vit_tiny, data.module.batch_size=2",
    )
    ap.add_argument("--out", default=str(ROOT / "results" / "costs"))
    ap.add_argument("--name", default=None, help="output file stem (default: the manifest's name)")
    args = ap.parse_args(argv)

    from onelora.costs import CostsError, Settings, markdown, run_costs, write_outputs
    from onelora.errors import user_errors
    from onelora.report.manifest import ManifestError, load_manifest

    try:
        if args.steps < 1 or args.warmup < 0:
            raise CostsError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
        manifest = load_manifest(args.manifest)
        settings = Settings(args.steps, args.warmup, args.device, args.layers, tuple(args.overrides))
        methods = [m for m in args.methods.split(",") if m] or None
        rows = run_costs(manifest, settings, methods)
    except (CostsError, ManifestError, *user_errors()) as e:
        print(f"costs: {e}", file=sys.stderr)
        return 2
    import torch

    reduced = [f"--layers {args.layers}"] if args.layers else []
    reduced += [f"--set {o}" for o in args.overrides]
    note = (
        f"{rows[0]['device']}, torch {torch.__version__}; {args.steps} steps (+{args.warmup} warm-up) per method, "
        f"median; random weights, synthetic batches of the experiment's shapes. "
        + (f"Reduced configuration: {' '.join(reduced)}. " if reduced else "Full size. ")
        + "Ratios to the reference method measured in the same run; the paper's columns from results/paper/."
    )
    paths = write_outputs(rows, Path(args.out), args.name or manifest.name, manifest.title, note)
    print(markdown(rows, manifest.title, note))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
