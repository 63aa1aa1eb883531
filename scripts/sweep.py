"""Launch the Hydra multirun(s) an experiment manifest describes, one per transfer group.

    python scripts/sweep.py experiments/fig6.yaml [--print] [hydra overrides ...]
    python scripts/sweep.py fig6 hydra/launcher=slurm hydra.launcher.partition=gpu

runs `python run.py -m experiment=<exp> peft=<m1,m2,...> seed=<0,1,...> <manifest overrides> <extra args>`.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from onelora.report import Manifest, ManifestError, load_manifest

ROOT = Path(__file__).resolve().parents[1]


def commands(manifest: Manifest, extra: list[str], python: str = sys.executable) -> list[list[str]]:
    return [
        [python, "run.py", "-m", f"experiment={g.experiment}", f"peft={','.join(manifest.methods)}",
         f"seed={','.join(map(str, manifest.seeds))}", *g.overrides, *extra]
        for g in manifest.groups
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", help="experiments/<name>.yaml, or a manifest name like fig6")
    ap.add_argument("--print", action="store_true", dest="dry", help="print the command(s), run nothing")
    args, extra = ap.parse_known_args(argv)
    try:
        manifest = load_manifest(args.manifest)
    except ManifestError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    for cmd in commands(manifest, extra):
        print(shlex.join(cmd), flush=True)
        if not args.dry and (rc := subprocess.run(cmd, cwd=ROOT).returncode) != 0:
            print(f"sweep: the multirun for {cmd[3]} exited with {rc}; `make report EXP={manifest.name}` lists "
                  "what finished", file=sys.stderr)  # fmt: skip
            return rc
    if not args.dry:
        print(f"done; now: make report EXP={manifest.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
