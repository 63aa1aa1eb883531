"""Refresh README.md's results tables from the committed results files (or, with --check, list the stale ones).

    python scripts/readme_tables.py           # rewrite every `<!-- table: PATH n=N -->` block from PATH
    python scripts/readme_tables.py --check   # exit 1 and name each block that differs from its file

The mechanism: onelora.report.readme (and the README's Design section).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from onelora.report.readme import ReadmeError, blocks, refresh, stale

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    try:
        if args.check:
            old = stale(text, args.readme.parent)
            for b in old:
                print(f"stale README table: {b}; run python scripts/readme_tables.py", file=sys.stderr)
            return 1 if old else 0
        new = refresh(text, args.readme.parent)
    except ReadmeError as e:
        print(f"readme_tables: {e}", file=sys.stderr)
        return 2
    tmp = args.readme.with_name(f".{args.readme.name}.tmp")
    tmp.write_text(new)
    tmp.replace(args.readme)
    print(f"{len(blocks(new))} table(s) in {args.readme}: {'updated' if new != text else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
