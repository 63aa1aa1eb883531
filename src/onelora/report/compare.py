"""A fresh results table beside the committed reference it reproduces (`make demo`, `make mini`, the diagnostic).

Reproduction commands write to results/local/<name>/ (git-ignored) and never overwrite the committed
results/<name>/; `compare` lines the two up, table by table, row by row (rows matched by their label cells, the
left-aligned ones), on every column but the machine's own measurements (time, memory). A table with a metric
column (its header ends in ↑ or ↓) is shown as `row | committed | this run | same?`; any other as a count of
the cells that differ, the first few named.
"""

from __future__ import annotations

import re
from pathlib import Path

from .readme import markdown_tables

MACHINE = re.compile(r"time|rss|memory|peak|\[s\]|\[gb\]", re.I)  # measured on the machine: never compared
EMPHASIS = re.compile(r"\*\*|\*|</?u>")  # the best/second marks move with the times


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _parse(table: str) -> tuple[list[str], dict[str, list[str]], list[int]]:
    lines = table.strip().splitlines()
    header, align, rows = _cells(lines[0]), _cells(lines[1]), [_cells(x) for x in lines[2:]]
    labels = [i for i, a in enumerate(align) if not a.endswith(":")] or [0]
    keyed = {" ".join(r[i] for i in labels if i < len(r)): [EMPHASIS.sub("", c) for c in r] for r in rows}
    compared = [i for i, h in enumerate(header) if i not in labels and not MACHINE.search(h)]
    return header, keyed, compared


def compare(reference: str, fresh: str, n_shown: int = 5) -> tuple[list[str], int]:
    """Lines that show `fresh` (a results file's text) beside `reference`, and how many compared cells differ."""
    old_tables, new_tables = markdown_tables(reference), markdown_tables(fresh)
    out: list[str] = []
    if len(old_tables) != len(new_tables):
        out.append(f"the committed file has {len(old_tables)} table(s), this run {len(new_tables)}")
    differ = 0
    for k, (old, new) in enumerate(zip(old_tables, new_tables), 1):
        header, old_rows, compared = _parse(old)
        new_rows = _parse(new)[1]
        metric = next((i for i in compared if header[i].endswith(("↑", "↓"))), None)
        changed, shown = [], []
        for label in dict.fromkeys([*old_rows, *new_rows]):
            a, b = old_rows.get(label), new_rows.get(label)
            cols = [i for i in compared if _at(a, i) != _at(b, i)]
            changed += [f"{label} {header[i]} {_at(a, i)} -> {_at(b, i)}" for i in cols]
            if metric is not None:
                shown.append(f"| {label} | {_at(a, metric)} | {_at(b, metric)} | {'no' if cols else 'yes'} |")
        differ += len(changed)
        if metric is not None:
            out += [f"| {header[0]} ({header[metric]}) | committed | this run | same? |", "|---|---:|---:|---|", *shown]
            continue
        cells = len(compared) * len({**old_rows, **new_rows})  # rows of either side: a missing row's cells differ
        more = "; ..." if len(changed) > n_shown else ""
        out.append(f"table {k}: all {cells} compared cells the same" if not changed else
                   f"table {k}: {len(changed)} of {cells} compared cells differ: {'; '.join(changed[:n_shown])}{more}")  # fmt: skip
    return out, differ


def _at(row: list[str] | None, i: int) -> str:
    return "–" if row is None or i >= len(row) else row[i]


def compare_files(reference: Path, fresh: Path) -> tuple[list[str], int]:
    """`compare` of two files and its verdict as the last line; a missing reference is one line, and no verdict."""
    if not reference.is_file():
        return [f"no committed reference {reference}: nothing to compare this run's {fresh} with"], 0
    lines, differ = compare(reference.read_text(), fresh.read_text())
    verdict = (f"{differ} cell(s) differ from the committed reference (README: what reproduces across machines)"
               if differ else "every compared cell the same as the committed reference")  # fmt: skip
    return [*lines, verdict], differ
