"""README tables generated from committed results files, so the README cannot drift from what was measured.

A block in README.md

    <!-- table: results/demo/table.md n=1 -->
    | ... the first Markdown table of results/demo/table.md ... |
    <!-- /table -->

holds the `n`-th Markdown table (default 1) of the file named, relative to the repository, verbatim.
`refresh` rewrites every block from its file (`python scripts/readme_tables.py`); `stale` lists the blocks
that differ (tests/test_readme.py fails on any). The results files come from their own commands (`make demo`,
`make mini`, `make bench`, ...), never from the tests.
"""

from __future__ import annotations

import re
from pathlib import Path

BLOCK = re.compile(r"(<!-- table: (?P<path>\S+)(?: n=(?P<n>\d+))? -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


class ReadmeError(ValueError):
    """A block names a file that does not exist or has fewer tables than asked for."""


def markdown_tables(text: str) -> list[str]:
    """The Markdown tables of a document: maximal runs of lines starting with `|`, each ending in a newline."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append("\n".join(current) + "\n")
            current = []
    if current:
        tables.append("\n".join(current) + "\n")
    return tables


def table_of(root: Path, path: str, n: int) -> str:
    file = root / path
    if not file.is_file():
        raise ReadmeError(f"README block names {path}, which does not exist; run the command that writes it")
    tables = markdown_tables(file.read_text())
    if not 1 <= n <= len(tables):
        raise ReadmeError(f"README block asks for table {n} of {path}, which has {len(tables)}")
    return tables[n - 1]


def blocks(text: str) -> list[tuple[str, int, str]]:
    """(path, n, body) of every block, in order."""
    return [(m["path"], int(m["n"] or 1), m["body"]) for m in BLOCK.finditer(text)]


def refresh(text: str, root: Path) -> str:
    """The README with every block's body replaced by its file's table."""
    return BLOCK.sub(lambda m: m[1] + table_of(root, m["path"], int(m["n"] or 1)) + m[5], text)


def stale(text: str, root: Path) -> list[str]:
    """`path (table n)` for each block whose body differs from its file's table."""
    return [f"{path} (table {n})" for path, n, body in blocks(text) if body != table_of(root, path, n)]
