"""Aggregate run records into the paper's table and figures, beside the paper's numbers.

    python scripts/report.py RUNS_DIR [RUNS_DIR ...] --out OUT_DIR [--experiment MANIFEST]
    python scripts/report.py --experiment fig6 --out results/fig6      # the manifest's runs dirs
                                                                        # (and logs/runs/<experiment>)
    python scripts/report.py --experiment demo --out results/local/demo --reference results/demo
                                                     # beside the committed reference (make demo)

Writes OUT_DIR/{table.md, table.tex, summary.csv, bubble.png, memory.png} and prints the coverage
(missing seeds, failed/diverged/interrupted runs, unreadable records). With --reference, prints the new
table.md beside REF_DIR/table.md (every column but time and memory; onelora.report.compare) instead of the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onelora.report import ManifestError, ReportError, load_manifest, write_report
from onelora.report.compare import compare_files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_dirs", nargs="*", type=Path, help="directories to scan for result.json")
    ap.add_argument("--out", type=Path, help="output directory (default: results/<manifest name> or results/report)")
    ap.add_argument("--experiment", help="manifest: experiments/<name>.yaml, a path, or a name/alias like fig6")
    ap.add_argument("--reference", type=Path, help="a committed results folder to show the new table beside")
    args = ap.parse_args(argv)
    try:
        manifest = load_manifest(args.experiment) if args.experiment else None
        dirs = args.runs_dirs or ([d for g in manifest.groups for d in g.dirs] if manifest else [])
        if not dirs:
            raise ReportError("give a RUNS_DIR to scan or --experiment MANIFEST")
        out = args.out or Path("results") / (manifest.name if manifest else "report")
        try:
            report = write_report(dirs, out, manifest)
        except OSError as e:  # a read-only place or a file in the way: one line
            where, target = Path(e.filename or "").absolute(), out.absolute()
            if not e.filename or not (target.is_relative_to(where) or where.is_relative_to(target)):
                raise  # not about the output folder
            raise ReportError(
                f"cannot write the report to {out} ({e.strerror}: {where}); give a writable --out"
            ) from None
    except (ManifestError, ReportError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    if args.reference is None:
        print((out / "table.md").read_text())
    print(f"wrote {', '.join(str(f) for f in report.files)}")
    if args.reference is not None:
        print_beside(args.reference / "table.md", out / "table.md")
    return 0


def print_beside(reference: Path, fresh: Path) -> None:
    """The fresh table beside the committed one, and whether they agree."""
    lines, _ = compare_files(reference, fresh)
    print(f"{fresh} beside the committed {reference} (time and memory aside):", *lines, sep="\n")


if __name__ == "__main__":
    sys.exit(main())
