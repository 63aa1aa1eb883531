"""The paper's Figure 9: the first principal component of a full fine-tuning update against summation,
random and LoRA's learned compression, per layer type.

    python scripts/pca_update.py FULL_RUN_DIR [--lora LORA_RUN_DIR] --out results/fig9_cls [--components 1]

FULL_RUN_DIR is a finished run with peft=full (its config.yaml and checkpoints/last.ckpt); the pre-trained
weights are rebuilt from the same config, so ΔW = W_full − W0. LORA_RUN_DIR (peft=lora, rank 1) adds LoRA's
learned A. Writes alignment.csv (one row per layer) and alignment.png; prints mean |cos| per layer type.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("ONELORA_ROOT", str(ROOT))


def run_folder(path: Path, error: type[Exception]) -> Path:
    """`path` itself if it is a run folder, else the one run folder below it: a sweep puts each run one level
    under `<method>/seed<k>/` (a folder named by its overrides), so that level names the run as well."""
    path = path.resolve()
    if (path / "result.json").is_file() or not path.is_dir():
        return path  # (load_run names what is missing)
    runs = sorted(r.parent for r in path.rglob("result.json"))
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise error(f"no run under {path} (no result.json); give a run folder, e.g. logs/multiruns/<name>/full/seed0")
    raise error(f"{path} holds {len(runs)} runs ({', '.join(str(r.relative_to(path)) for r in runs)}); give one")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("full_run", type=Path)
    ap.add_argument("--lora", type=Path, default=None, help="a peft=lora (r=1) run of the same model")
    ap.add_argument("--out", type=Path, default=Path("results/fig9"))
    ap.add_argument("--components", type=int, default=1, help="best |cos| over the first N principal components")
    args = ap.parse_args(argv)

    import lightning as L

    from onelora.models import build_model
    from onelora.report.pca import LABELS, alignment_figure, update_alignment
    from onelora.run.checkpoints import RunError, load_run
    from onelora.run.logs import quiet_dependencies

    quiet_dependencies()  # no transformers loading bars between the script's lines
    try:
        cfg, full, _ = load_run(run_folder(args.full_run, RunError))
        lora = load_run(run_folder(args.lora, RunError))[1] if args.lora else None
    except RunError as e:
        print(f"pca_update: {e}", file=sys.stderr)
        return 2
    if cfg.peft.name != "full":
        print(f"pca_update: {args.full_run} is a peft={cfg.peft.name} run; Figure 9 needs peft=full", file=sys.stderr)
        return 2
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # architecture-only models: the run's own W0
    base = build_model(cfg.model)
    rows = update_alignment(base, full, lora, components=args.components)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "alignment.csv", "w", newline="") as f:
        fields = ["layer", "type", "summation", "random", "lora_A"]
        w = csv.DictWriter(f, fieldnames=[k for k in fields if any(k in r for r in rows)])
        w.writeheader()
        w.writerows(rows)
    alignment_figure(rows, f"{cfg.model.name} on {cfg.data.name}").savefig(args.out / "alignment.png", dpi=110)
    for kind, label in LABELS.items():
        sel = [r for r in rows if r["type"] == kind]
        if sel:
            means = {v: sum(r[v] for r in sel) / len(sel) for v in ("summation", "random", "lora_A") if v in sel[0]}
            print(f"{label:>10} ({len(sel)} layers): " + ", ".join(f"{v} {m:.3f}" for v, m in means.items()))
    print(f"wrote {args.out / 'alignment.csv'} and {args.out / 'alignment.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
