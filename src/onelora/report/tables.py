"""Paper-style tables in Markdown and LaTeX: per column the best value bold, the second underlined,
the third italic (direction-aware: higher accuracy is better, lower time/memory/params/error is better).

Ranks are taken on the values as printed, so two cells that read the same get the same style.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .manifest import Manifest
from .plots import method_label

DASH = "–"
ARROW = {"min": "↓", "max": "↑"}
MD_STYLE = {1: "**{}**", 2: "<u>{}</u>", 3: "*{}*"}
TEX_STYLE = {1: "\\textbf{{{}}}", 2: "\\underline{{{}}}", 3: "\\textit{{{}}}"}
TEX_CHARS = {"%": "\\%", "&": "\\&", "_": "\\_", "#": "\\#", "±": "$\\pm$", "↓": "$\\downarrow$",
             "↑": "$\\uparrow$", "→": "$\\rightarrow$", "₁": "$_1$", "₆": "$_6$", "β": "$\\beta$",
             "γ": "$\\gamma$", "–": "--"}  # fmt: skip
SUFFIXES = ((1e9, "B"), (1e6, "M"), (1e3, "K"))


def missing(x: object) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def format_params(n: float | int | None) -> str:
    """Parameter counts as the paper prints them: 221.18K, 1.36M, 335.32M."""
    if missing(n):
        return DASH
    for div, suffix in SUFFIXES:
        if abs(float(n)) >= div:
            return f"{float(n) / div:.2f}{suffix}"
    return f"{float(n):.0f}"


def sig(x: float | None, digits: int, zeros: bool = False) -> str:
    """`digits` significant digits, never in exponent notation (0.000066, 63, 9.6; 2.0 with `zeros`)."""
    if missing(x):
        return DASH
    trim = "k" if zeros else "-"
    return np.format_float_positional(float(x), precision=digits, unique=False, fractional=False, trim=trim).rstrip(".")


def mean_std(mean: float | None, std: float | None, decimals: int) -> str:
    """`92.00 ± 2.0`: the mean to the metric's decimals, the std to two significant digits."""
    if missing(mean):
        return DASH
    return f"{mean:.{decimals}f}" + ("" if missing(std) else f" ± {sig(std, 2, zeros=True)}")


def parse(text: str) -> float:
    """The number a cell shows (its first number; K/M/B suffixes expanded), NaN for none."""
    m = re.match(r"\s*(-?\d+(?:\.\d*)?(?:e-?\d+)?)([KMB]?)", text)
    if not m:
        return math.nan
    return float(m.group(1)) * {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9}[m.group(2)]


def ranks(texts: list[str], direction: str | None) -> list[int]:
    """Dense rank (1 = best) of each printed value; 0 for unranked and empty cells."""
    if direction is None:
        return [0] * len(texts)
    r = pd.Series([parse(t) for t in texts], dtype=float).rank(method="dense", ascending=direction == "min")
    return [int(x) if x == x else 0 for x in r]


def paper_name(table: str) -> str:
    return re.sub(r"^table", "Table ", table)


@dataclass
class Column:
    header: str
    texts: list[str]
    direction: str | None = None
    source: str = "ours"  # "ours" | "paper"

    @property
    def ranks(self) -> list[int]:
        return ranks(self.texts, self.direction)


def _lookup(view: pd.DataFrame | None, transfer: str, methods: list[str]) -> list[pd.Series | None]:
    if view is None or view.empty:
        return [None] * len(methods)
    sel = view[view.transfer == transfer].drop_duplicates("method").set_index("method")
    return [sel.loc[m] if m in sel.index else None for m in methods]


def _get(row: pd.Series | None, key: str) -> float | None:
    return None if row is None or key not in row.index or missing(row[key]) else float(row[key])


def _text(row: pd.Series | None, key: str) -> str | None:
    """The paper's printed string for `key`, if the view carries one."""
    if row is None or f"{key}_text" not in row.index or not isinstance(row[f"{key}_text"], str):
        return None
    return row[f"{key}_text"] or DASH


def columns(view: pd.DataFrame | None, source: str, transfer: str, methods: list[str], manifest: Manifest,
            skip_empty: bool) -> list[Column]:  # fmt: skip
    """The table columns of one source (ours or the paper) for one transfer, rows in `methods` order."""
    rows = _lookup(view, transfer, methods)
    unit = str(view.time_unit.iloc[0]) if view is not None and "time_unit" in view and len(view) else manifest.time_unit
    rss = view is not None and "rss_gb" in view and view.memory_pct.isna().all() and view.rss_gb.notna().any()
    cols = [Column(f"Time [{unit}] ↓", [_text(r, "time") or sig(_get(r, "time"), 3) for r in rows],
                   "min", source)]  # fmt: skip
    for i, m in enumerate(manifest.metrics):
        key = "metric" if i == 0 else m.name
        texts = []
        for r in rows:
            printed = _text(r, f"{key}_mean")
            if printed is not None:  # the paper's strings as printed
                std = _text(r, f"{key}_std")
                texts.append(printed if printed == DASH or std in (None, DASH) else f"{printed} ± {std}")
            else:
                texts.append(mean_std(_get(r, f"{key}_mean"), _get(r, f"{key}_std"), m.decimals))
        cols.append(Column(f"{m.label} {ARROW[m.direction]}", texts, m.direction, source))
    if rss:  # CPU runs: no accelerator memory; the process's peak resident memory, labelled as such
        cols.append(Column("Peak RSS [GB] ↓", [sig(_get(r, "rss_gb"), 2) for r in rows], "min", source))
    else:
        cols.append(Column("Memory [%] ↓", [_text(r, "memory_pct") or sig(_get(r, "memory_pct"), 2) for r in rows],
                           "min", source))  # fmt: skip
    cols.append(
        Column("Params ↓", [_text(r, "params") or format_params(_get(r, "params")) for r in rows], "min", source)
    )
    if source == "ours":
        cols.append(Column("Seeds", [DASH if r is None else f"{int(r.n_ok)}/{len(manifest.seeds)}" for r in rows]))
    if skip_empty:
        cols = [c for c in cols if any(t != DASH for t in c.texts)]
    return cols


@dataclass
class Section:
    transfer: str
    methods: list[str]
    columns: list[Column]


def sections(ours: pd.DataFrame | None, paper: pd.DataFrame | None, manifest: Manifest) -> list[Section]:
    """One section per transfer: our columns (every manifest method, so missing ones show), then the paper's."""
    out = []
    for transfer in manifest.transfers:
        present = set()
        for view in (ours, paper):
            if view is not None and not view.empty:
                present |= set(view[view.transfer == transfer].method)
        methods = [m for m in manifest.methods if m in present]
        cols = columns(ours, "ours", transfer, methods, manifest, skip_empty=False) if ours is not None else []
        cols += columns(paper, "paper", transfer, methods, manifest, skip_empty=True) if paper is not None else []
        if methods:
            out.append(Section(transfer, methods, cols))
    return out


def _header(col: Column, both: bool) -> str:
    return f"Paper: {col.header}" if both and col.source == "paper" else col.header


def markdown(secs: list[Section], manifest: Manifest) -> str:
    both = any(c.source == "ours" for s in secs for c in s.columns) and any(
        c.source == "paper" for s in secs for c in s.columns
    )
    out = []
    for s in secs:
        if len(manifest.transfers) > 1:
            out.append(f"### {s.transfer}\n")
        out.append("| Method | " + " | ".join(_header(c, both) for c in s.columns) + " |")
        out.append("|---|" + "---:|" * len(s.columns))
        styled = [[MD_STYLE.get(r, "{}").format(t) for t, r in zip(c.texts, c.ranks)] for c in s.columns]
        for i, m in enumerate(s.methods):
            out.append(f"| {method_label(m)} | " + " | ".join(col[i] for col in styled) + " |")
        out.append("")
    return "\n".join(out)


def tex_escape(text: str) -> str:
    return "".join(TEX_CHARS.get(ch, ch) for ch in text)


def latex(secs: list[Section], manifest: Manifest, caption: str) -> str:
    if not secs:
        return f"% {caption}: no rows\n"
    ncols = len(secs[0].columns)
    sources = [c.source for c in secs[0].columns]
    lines = ["% requires \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering",
             f"\\caption{{{tex_escape(caption)}}}", f"\\begin{{tabular}}{{l{'r' * ncols}}}", "\\toprule"]  # fmt: skip
    if "ours" in sources and "paper" in sources:
        n_ours = sources.count("ours")
        paper = paper_name(manifest.paper_table or "paper")
        lines.append(
            f" & \\multicolumn{{{n_ours}}}{{c}}{{Ours}} & \\multicolumn{{{ncols - n_ours}}}{{c}}{{Paper ({paper})}} \\\\"
        )
        lines.append(f"\\cmidrule(lr){{2-{n_ours + 1}}} \\cmidrule(lr){{{n_ours + 2}-{ncols + 1}}}")
    lines.append("Method & " + " & ".join(tex_escape(c.header) for c in secs[0].columns) + " \\\\")
    for s in secs:
        lines.append("\\midrule")
        if len(manifest.transfers) > 1:
            lines += [
                f"\\multicolumn{{{ncols + 1}}}{{l}}{{{tex_escape(s.transfer.replace('->', '→'))}}} \\\\",
                "\\midrule",
            ]
        styled = [[TEX_STYLE.get(r, "{}").format(tex_escape(t)) for t, r in zip(c.texts, c.ranks)] for c in s.columns]
        for i, m in enumerate(s.methods):
            lines.append(f"{tex_escape(method_label(m))} & " + " & ".join(col[i] for col in styled) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)
