"""The paper's figures: bubble plots (x time, y metric ± std, bubble area ∝ trainable parameters, "All" capped)
and memory bar plots, ours beside the paper's. One colour per method, the same in every figure."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

METHOD_LABELS: dict[str, str] = {
    "onelora": "1LoRA", "onelora_random": "1LoRA (random)", "lora": "LoRA", "lora_qkv": "LoRA (QKV)",
    "dora": "DoRA", "vera": "VeRA", "mora1": "MoRA₁", "mora6": "MoRA₆", "bitfit": "BitFit", "bias": "β",
    "difffit": "DiffFit", "full": "All", "head": "Head only", "norms": "norms", "gamma": "γ",
    "onelora_bias": "1LoRA(β)", "onelora_norms": "1LoRA(norms)", "onelora_gamma": "1LoRA(γ)",
    "onelora_bias_norms": "1LoRA(β,norms)", "onelora_bias_gamma": "1LoRA(β,γ)",
    "onelora_gamma_norms": "1LoRA(γ,norms)", "onelora_bias_gamma_norms": "1LoRA(β,γ,norms)",
}  # fmt: skip
METHOD_COLORS: dict[str, str] = {
    "onelora": "#d62728", "onelora_random": "#ff9896", "lora": "#1f77b4", "lora_qkv": "#aec7e8",
    "dora": "#9467bd", "vera": "#8c564b", "mora1": "#2ca02c", "mora6": "#98df8a", "bitfit": "#ff7f0e",
    "bias": "#ff7f0e", "difffit": "#e377c2", "full": "#7f7f7f", "head": "#c7c7c7", "norms": "#17becf",
    "gamma": "#bcbd22", "onelora_bias": "#8c6d31", "onelora_norms": "#006d5b", "onelora_gamma": "#7b4173",
    "onelora_bias_norms": "#5254a3", "onelora_bias_gamma": "#637939", "onelora_gamma_norms": "#843c39",
    "onelora_bias_gamma_norms": "#000000",
}  # fmt: skip
BUBBLE = 900.0  # marker area (pt²) of the largest method that is not capped
CAP = 2.0  # "All" is drawn at most CAP x BUBBLE, as in the paper ("capped due to space limitations")
CAPPED = {"full"}


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def method_color(method: str) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    cmap = plt.get_cmap("tab20")
    return matplotlib.colors.to_hex(cmap(zlib.crc32(method.encode()) % 20))


def _note(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4")


def nice_below(x: float) -> float:
    """The largest of 1, 2, 5 x 10^k that is <= x (reference values for the bubble-size legend)."""
    k = math.floor(math.log10(x))
    return max(m * 10.0**k for m in (1, 2, 5) if m * 10.0**k <= x * (1 + 1e-9))


def reference_params(params: pd.Series) -> list[float]:
    """2-3 round parameter counts spanning the drawn bubbles: below the largest, the smallest and between."""
    p = params[params > 0].dropna()
    if p.empty:
        return []
    lo, hi = float(p.min()), float(p.max())
    return sorted({nice_below(hi), nice_below(math.sqrt(lo * hi)), nice_below(lo)}, reverse=True)


def short_count(n: float) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:g}{suffix}"
    return f"{n:g}"


def bubble_panel(ax: plt.Axes, view: pd.DataFrame, metric_label: str, time_unit: str, key: str = "metric") -> None:
    """One bubble plot: a bubble per method at (time, metric mean), error bar ± std, area ∝ params (with a legend
    of 2-3 reference bubbles). The view's `time_unit` column, when present, overrides `time_unit` (seconds)."""
    rows = view.dropna(subset=["time", f"{key}_mean"]) if len(view) else view
    if "time_unit" in rows and len(rows):
        time_unit = str(rows.time_unit.iloc[0])
    ax.set_xlabel(f"Time [{time_unit}]")
    ax.set_ylabel(metric_label)
    ax.grid(alpha=0.3)
    if rows.empty:
        _note(ax, "no runs with a time and a metric value")
        return
    params = rows["params"].astype(float)
    ref = params[~rows.method.isin(CAPPED)].max()
    ref = ref if ref == ref and ref > 0 else params.max()
    for (_, r), p in zip(rows.iterrows(), params):
        color = method_color(r.method)
        area = BUBBLE * p / ref if p == p and ref == ref and ref > 0 else BUBBLE / 4
        capped = r.method in CAPPED and area > CAP * BUBBLE
        area = min(area, CAP * BUBBLE) if r.method in CAPPED else area
        std = r.get(f"{key}_std")
        if std == std and std is not None:
            ax.errorbar(r.time, r[f"{key}_mean"], yerr=std, fmt="none", ecolor=color, elinewidth=1.2, capsize=3,
                        zorder=2)  # fmt: skip
        ax.scatter(r.time, r[f"{key}_mean"], s=max(area, 12.0), color=color, alpha=0.55, edgecolors=color,
                   linewidths=1.5, linestyles="--" if capped else "-", zorder=3)  # fmt: skip
    ax.margins(0.18)
    if ref == ref and ref > 0:  # bubble size: the same area per parameter as the bubbles above
        refs = reference_params(params[~rows.method.isin(CAPPED)] if (~rows.method.isin(CAPPED)).any() else params)
        handles = [ax.scatter([], [], s=max(BUBBLE * v / ref, 12.0), color="0.6", alpha=0.45, edgecolors="0.3")
                   for v in refs]  # fmt: skip
        ax.legend(handles, [short_count(v) for v in refs], title="trainable params", fontsize=7, title_fontsize=7,
                  loc="best", labelspacing=1.4, borderpad=0.9, framealpha=0.6, scatterpoints=1)  # fmt: skip


def rss_only(view: pd.DataFrame) -> bool:
    """Runs with no accelerator memory (CPU) but a peak RSS: their bars show the process's peak RSS [GB]."""
    return "rss_gb" in view and view.memory_pct.isna().all() and view.rss_gb.notna().any()


def memory_panel(ax: plt.Axes, views: list[tuple[str, pd.DataFrame]], methods: list[str]) -> None:
    """Peak memory [%] per method, one bar per source (ours solid, the paper hatched). CPU runs have no accelerator
    memory: their peak RSS [GB] is drawn instead, labelled as such (the paper's % is not comparable)."""
    rss = [(s, v) for s, v in views if rss_only(v)]
    if rss:
        source, view = rss[0]
        shown = [m for m in methods if view[view.method == m].rss_gb.notna().any()]
        for i, m in enumerate(shown):
            ax.bar(i, view[view.method == m].rss_gb.dropna().iloc[0], 0.6, color=method_color(m), alpha=0.85,
                   edgecolor="0.2")  # fmt: skip
        ax.set_ylabel(f"{source}: peak RSS [GB]\n(CPU runs: process memory)")
        ax.set_xticks(range(len(shown)), [method_label(m) for m in shown], rotation=45, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        if len(views) > 1:  # the paper's memory is % of an A100: not comparable with a CPU process's RSS
            ax.set_title("(the paper's memory [% of an A100] is in the table)", fontsize=7, loc="right")
        return
    shown = [m for m in methods if any((v.method == m).any() and v[v.method == m].memory_pct.notna().any()
                                       for _, v in views)]  # fmt: skip
    ax.set_ylabel("Memory [%]")
    ax.grid(axis="y", alpha=0.3)
    if not shown:
        _note(ax, "no accelerator memory or peak RSS recorded")
        return
    width = 0.8 / len(views)
    for j, (source, view) in enumerate(views):
        paper = source.startswith("Paper")
        for i, m in enumerate(shown):
            hit = view[view.method == m].memory_pct.dropna()
            if len(hit):
                ax.bar(i + (j - (len(views) - 1) / 2) * width, hit.iloc[0], width, color=method_color(m),
                       alpha=0.45 if paper else 0.85, hatch="//" if paper else None, edgecolor="0.2")  # fmt: skip
    ax.set_xticks(range(len(shown)), [method_label(m) for m in shown], rotation=45, ha="right", fontsize=8)
    if len(views) > 1:
        handles = [Patch(facecolor="0.6", alpha=0.45 if s.startswith("Paper") else 0.85, edgecolor="0.2",
                         hatch="//" if s.startswith("Paper") else None, label=s) for s, _ in views]  # fmt: skip
        ax.legend(handles=handles, fontsize=8)


def _legend(fig: Figure, methods: list[str]) -> None:
    handles = [Line2D([], [], marker="o", ls="", color=method_color(m), alpha=0.7, markersize=9,
                      label=method_label(m) + (" (capped)" if m in CAPPED else "")) for m in methods]  # fmt: skip
    fig.legend(handles=handles, loc="outside right center", frameon=False, fontsize=9)


def _present(views: list[tuple[str, pd.DataFrame]], methods: list[str]) -> list[str]:
    seen = set().union(*[set(v.method) for _, v in views]) if views else set()
    return [m for m in methods if m in seen]


def bubble_figure(panels: list[list[tuple[str, pd.DataFrame]]], methods: list[str], metric_label: str,
                  time_unit: str, title: str) -> Figure:  # fmt: skip
    """A grid of bubble plots, each panel (title, view)."""
    nrows, ncols = len(panels), max(len(r) for r in panels)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 1.6, 3.6 * nrows + 0.4), squeeze=False,
                             layout="constrained")  # fmt: skip
    for i, row in enumerate(panels):
        for j in range(ncols):
            if j < len(row):
                axes[i][j].set_title(row[j][0], fontsize=10)
                bubble_panel(axes[i][j], row[j][1], metric_label, time_unit)
            else:
                axes[i][j].set_axis_off()
    _legend(fig, _present([p for r in panels for p in r], methods))
    fig.suptitle(title, fontsize=11)
    return fig


def memory_figure(panels: list[tuple[str, list[tuple[str, pd.DataFrame]]]], methods: list[str], title: str) -> Figure:
    """One bar plot per transfer (title, [(source, view), ...])."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(5.0, 0.55 * len(methods) + 2), 3.4 * len(panels) + 0.4),
                             squeeze=False, layout="constrained")  # fmt: skip
    for ax, (name, views) in zip(axes[:, 0], panels):
        ax.set_title(name, fontsize=10)
        memory_panel(ax, views, methods)
    fig.suptitle(title, fontsize=11)
    return fig


def save(fig: Figure, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
