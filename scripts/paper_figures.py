"""Regenerate every paper table and figure from results/paper/*.csv alone (no runs needed).

    python scripts/paper_figures.py [--out results/paper_figures] [--dpi 80]

For each experiments/*.yaml that names a paper table: <out>/<name>/{table.md, table.tex, bubble.png,
memory.png} (figures only where the paper prints time/memory), and <out>/README.md indexing them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from onelora.report import load_manifest, manifest_paths, write_paper_figures
from onelora.report.tables import paper_name

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "paper_figures")
    ap.add_argument("--dpi", type=int, default=80)
    args = ap.parse_args(argv)
    index = ["# The paper's tables and figures, redrawn from `results/paper/` by `make paper-figures`", "",
             "| item | paper table | files |", "|---|---|---|"]  # fmt: skip
    for path in manifest_paths():
        manifest = load_manifest(path)
        if not manifest.paper_table:
            continue
        out = args.out / manifest.name
        shutil.rmtree(out, ignore_errors=True)
        files = write_paper_figures(manifest, out, dpi=args.dpi)
        links = ", ".join(f"[{f.name}]({manifest.name}/{f.name})" for f in files)
        index.append(f"| {manifest.title} | {paper_name(manifest.paper_table)} | {links} |")
        print(f"{manifest.name}: {', '.join(os.path.relpath(f) for f in files)}")
    (args.out / "README.md").write_text("\n".join(index) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
