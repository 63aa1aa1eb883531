"""The cost tables: the paper's time and memory columns beside the measured ones, as ratios to 1LoRA (or BitFit)
in the same run; `<name>.csv`, `.md` and `.png` (the paper's ratio against the measured one, per method)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

from ..report.manifest import PAPER_DIR, Manifest

COLUMNS = [
    "experiment", "transfer", "method", "device", "precision", "strategy", "steps", "batch_size", "input_shape",
    "trainable_params", "peft_params", "total_params", "step_ms", "saved_bytes", "peak_allocated_bytes",
    "peak_reserved_bytes", "peak_rss_bytes", "state_bytes", "measured_bytes", "est_activations_bytes",
    "est_total_bytes", "est_error", "dryrun_total_bytes", "paper_time", "paper_time_unit", "paper_memory_pct",
    "reference", "step_ratio", "memory_ratio", "est_ratio", "paper_time_ratio", "paper_memory_ratio",
]  # fmt: skip


# --- the paper's columns, ratios ------------------------------------------------------------------------------------
def paper_costs(manifest: Manifest) -> dict[tuple[str, str], dict[str, Any]]:
    """(transfer, method) -> the paper's time, unit and memory %, from the manifest's table, else any other
    table printing the same runs with cost columns (Table 2's runs: Tables S2/S3)."""
    import pandas as pd

    tables = sorted(PAPER_DIR.glob("table*.csv"))
    if manifest.paper_table:
        tables.sort(key=lambda p: p.stem != manifest.paper_table)
    tables.sort(key=lambda p: p.stem == "tableS1")  # time only, and runs of its own: the last resort
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in tables:
        df = pd.read_csv(path, dtype=str)
        if not {"transfer", "method", "time", "memory_pct"} <= set(df.columns):
            continue
        for _, r in df.iterrows():
            row = out.setdefault((str(r["transfer"]), str(r["method"])), {})
            if row.get("paper_time") is None and not pd.isna(r["time"]):  # each column from the first table having it
                row["paper_time"], row["paper_time_unit"] = float(r["time"]), r.get("time_unit")
            if row.get("paper_memory_pct") is None and not pd.isna(r["memory_pct"]):
                row["paper_memory_pct"] = float(r["memory_pct"])
    return out


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Ratios to the reference method of the same experiment (1LoRA, else BitFit), measured in the same run."""
    for exp in dict.fromkeys(r["experiment"] for r in rows):
        group = [r for r in rows if r["experiment"] == exp]
        ref = next((r for m in ("onelora", "bitfit") for r in group if r["method"] == m), None)
        for r in group:
            r["reference"] = ref["method"] if ref else None
            for out, key in (("step_ratio", "step_ms"), ("memory_ratio", "measured_bytes"),
                             ("est_ratio", "est_total_bytes"), ("paper_time_ratio", "paper_time"),
                             ("paper_memory_ratio", "paper_memory_pct")):  # fmt: skip
                a, b = r.get(key), ref.get(key) if ref else None
                r[out] = a / b if a is not None and b else None


# --- output --------------------------------------------------------------------------------------------------------------
def _fmt(x: Any, kind: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if kind == "gib":
        return f"{x / 2**30:.2f}" if x >= 2**27 else f"{x / 2**20:.1f} MiB" if x >= 2**20 else f"{x / 2**10:.1f} KiB"
    if kind == "ratio":
        return f"{x:.3f}"
    if kind == "pct":
        return f"{100 * x:+.1f}%"
    return str(x)


def markdown(rows: list[dict[str, Any]], title: str, note: str = "") -> str:
    gpu = any(r.get("peak_allocated_bytes") for r in rows)
    mem = "peak alloc. [GiB]" if gpu else "state + saved [GiB]"
    head = (f"| transfer | method | step [ms] | ×ref | paper time ×ref | saved act. [GiB] | est. (error) | {mem} | "
            "×ref | est. total ×ref | paper memory ×ref | dry run (as configured) [GiB] |")  # fmt: skip
    lines = [f"# {title}", "", note, "", head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['transfer']} | {r['method']} | {r['step_ms']:.1f} | {_fmt(r['step_ratio'], 'ratio')} | "
            f"{_fmt(r.get('paper_time_ratio'), 'ratio')} | {_fmt(r['saved_bytes'], 'gib')} | "
            f"{_fmt(r.get('est_activations_bytes'), 'gib')} ({_fmt(r.get('est_error'), 'pct')}) | "
            f"{_fmt(r['measured_bytes'], 'gib')} | {_fmt(r['memory_ratio'], 'ratio')} | "
            f"{_fmt(r.get('est_ratio'), 'ratio')} | {_fmt(r.get('paper_memory_ratio'), 'ratio')} | "
            f"{_fmt(r.get('dryrun_total_bytes'), 'gib')} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict[str, Any]], out_dir: Path, name: str, title: str, note: str) -> list[Path]:
    """`<name>.csv`, `<name>.md` and `<name>.png` (paper ratio against measured ratio), written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.csv", out_dir / f"{name}.md", out_dir / f"{name}.png"]
    tmp = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in paths]
    with open(tmp[0], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp[1].write_text(markdown(rows, title, note))
    plot_ratios(rows, tmp[2], title)
    for t, p in zip(tmp, paths):
        os.replace(t, p)
    return paths


def plot_ratios(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Two panels (time, memory): the paper's ratio to the reference against ours, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.plots import method_color, method_label

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, (paper, ours, what) in zip(axes, (("paper_time_ratio", "step_ratio", "step time"),
                                              ("paper_memory_ratio", "memory_ratio", "memory"))):  # fmt: skip
        pts = [(r[paper], r[ours], r) for r in rows if r.get(paper) is not None and r.get(ours) is not None]
        for x, y, r in pts:
            ax.scatter(x, y, color=method_color(r["method"]), s=40, zorder=3)
            ax.annotate(method_label(r["method"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        values = [v for x, y, _ in pts for v in (x, y)] or [1.0]
        lo, hi = min(values + [1.0]) * 0.95, max(values + [1.0]) * 1.05
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1, ls="--", zorder=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"paper: {what} / reference")
        ax.set_ylabel(f"measured: {what} / reference")
        ax.grid(alpha=0.3)
        if not pts:
            ax.text(0.5, 0.5, "no paper column", ha="center", transform=ax.transAxes, color="0.4")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
