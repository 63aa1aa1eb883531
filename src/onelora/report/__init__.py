"""Reports: run records -> the paper's tables and figures, beside the paper's own numbers.

    from onelora.report import load_manifest, write_report
    write_report(["logs/multiruns/cls_cifar10"], "results/fig6", load_manifest("fig6"))

writes `table.md`, `table.tex`, `summary.csv`, `bubble.png`, `memory.png` and returns the summary and
the coverage lines (missing seeds, failed/diverged/interrupted runs, unreadable records).
`write_paper_figures(manifest, out)` draws the same from `results/paper/` alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from . import plots, tables, tuning
from .aggregate import (
    coverage,
    load_runs,
    manifest_from_records,
    paper_frame,
    read_records,
    select,
    summarize,
    with_paper,
)
from .manifest import PAPER_DIR, Manifest, ManifestError, load_manifest, manifest_paths

__all__ = [
    "Manifest", "ManifestError", "Report", "ReportError", "figures", "load_manifest", "manifest_paths",
    "ours_view", "paper_frame", "write_paper_figures", "write_report",
]  # fmt: skip


class ReportError(ValueError):
    """Nothing to report (no records); the message says where it looked."""


@dataclass
class Report:
    summary: pd.DataFrame
    coverage: list[str]
    files: list[Path] = field(default_factory=list)


def ours_view(summary: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
    """summary.csv rows in the units the tables and plots show: time in the manifest's unit, or in seconds when every
    time is under a minute (`time_unit` column); memory in % of the accelerator, or the peak RSS [GB] of CPU runs."""
    df = summary.rename(columns={"data": "transfer"}).copy()
    df["transfer"] = df["transfer"].astype(str)
    df["time"] = df["time_min_mean"] / (60.0 if manifest.time_unit == "h" else 1.0)
    df["time_unit"] = manifest.time_unit
    times = df["time_min_mean"].dropna()
    if manifest.time_unit == "min" and len(times) and (times < 1.0).all():
        df["time"], df["time_unit"] = df["time_min_mean"] * 60.0, "s"
    df["memory_pct"] = df["peak_mem_frac_mean"] * 100.0
    df["rss_gb"] = df["peak_rss_gb_mean"] if "peak_rss_gb_mean" in df else math.nan
    df["params"] = pd.to_numeric(df[manifest.params], errors="coerce").astype(float)
    return df


def figures(ours: pd.DataFrame | None, paper: pd.DataFrame | None, manifest: Manifest) -> tuple[Figure, Figure]:
    """(bubble figure, memory figure): per transfer, ours and the paper's side by side."""
    paper_title = f"Paper ({tables.paper_name(manifest.paper_table or '')})"
    sources = [(name, v) for name, v in (("Ours", ours), (paper_title, paper)) if v is not None]
    cells = [(f"{name}: {t}" if len(manifest.transfers) > 1 or name == "Ours" else name, v[v.transfer == t])
             for t in manifest.transfers for name, v in sources]  # fmt: skip
    ncols = len(sources) if len(sources) > 1 else min(2, len(cells))  # ours | paper, else two transfers a row
    grid = [cells[i : i + ncols] for i in range(0, len(cells), ncols)]
    m = manifest.metric
    label = f"{m.label} ({'higher' if m.direction == 'max' else 'lower'} is better)"
    methods = list(manifest.methods)
    bubble = plots.bubble_figure(grid, methods, label, manifest.time_unit, manifest.title)
    memory = plots.memory_figure(
        [(t, [(name, v[v.transfer == t]) for name, v in sources]) for t in manifest.transfers], methods, manifest.title
    )
    return bubble, memory


def _document(manifest: Manifest, secs: list[tables.Section], cov: list[str] | None, paper: pd.DataFrame | None,
              ours: pd.DataFrame | None = None) -> str:  # fmt: skip
    m = manifest.metric
    unit = str(ours.time_unit.iloc[0]) if ours is not None and len(ours) else manifest.time_unit
    rss = ours is not None and plots.rss_only(ours)
    memory = ("peak resident memory (RSS) of the process in GB: CPU runs have no accelerator memory" if rss
              else "peak allocated accelerator memory in % of the device")  # fmt: skip
    lines = [f"# {manifest.title}", ""] + ([f"Note: {manifest.note}", ""] if manifest.note else [])
    if cov is not None:
        lines.append(f"Ours: mean ± sample std (n-1) over the seeds that ended ok (Seeds = ok / expected); "
                     f"{m.label} is each run's best validation value"
                     f"{' (the other metrics: their final value)' if len(manifest.metrics) > 1 else ''}; "
                     f"time = training + validation wall-clock "
                     f"[{unit}]; memory = {memory}; "
                     f"params = trainable parameters of the method, task head excluded.")  # fmt: skip
    if paper is not None:
        lines.append(f"Paper: {tables.paper_name(manifest.paper_table or '')} as printed (memory in % of an "
                     f"A100 40GB), from `results/paper/{manifest.paper_table}.csv`.")  # fmt: skip
    lines += ["Best value per column **bold**, second <u>underlined</u>, third *italic* (↓ lower is better, "
              "↑ higher is better).", "", "## Results", "", tables.markdown(secs, manifest)]  # fmt: skip
    if cov is not None:
        lines += ["## Coverage", ""] + [f"- {c}" for c in cov] + [""]
    if paper is not None:
        notes = paper[paper.note.astype(str) != ""].groupby("note", sort=False).method.unique()
        if len(notes):
            lines += ["## Notes on the paper's numbers", ""]
            for note, ms in notes.items():
                who = "all rows" if len(ms) == paper.method.nunique() > 1 else ", ".join(map(plots.method_label, ms))
                lines.append(f"- {who}: {note}")
            lines.append("")
    return "\n".join(lines)


def _write_all(out: Path, manifest: Manifest, ours: pd.DataFrame | None, paper: pd.DataFrame | None,
               cov: list[str] | None, dpi: int) -> list[Path]:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    secs = tables.sections(ours, paper, manifest)
    caption = manifest.title + (f" (paper: {tables.paper_name(manifest.paper_table)})" if paper is not None and
                                ours is not None and manifest.paper_table else "")  # fmt: skip
    (out / "table.md").write_text(_document(manifest, secs, cov, paper, ours))
    (out / "table.tex").write_text(tables.latex(secs, manifest, caption))
    files = [out / "table.md", out / "table.tex"]
    # a report always writes both figures (with a note where there is nothing to draw); the paper alone only
    # those it has numbers for (Table 2 prints no time, memory or params)
    bubble, memory = figures(ours, paper, manifest)
    draw_bubble = ours is not None or paper is not None and paper[["time", "metric_mean"]].notna().all(axis=1).any()
    draw_memory = ours is not None or paper is not None and paper.memory_pct.notna().any()
    for fig, name, draw in ((bubble, "bubble.png", draw_bubble), (memory, "memory.png", draw_memory)):
        if draw:
            files.append(plots.save(fig, out / name, dpi))
        else:
            plots.plt.close(fig)
    return files


def write_report(runs_dirs: Sequence[str | Path], out: str | Path, manifest: Manifest | None = None,
                 paper_dir: Path = PAPER_DIR, dpi: int = 110) -> Report:  # fmt: skip
    """Aggregate every result.json under `runs_dirs` and write the report into `out`."""
    records = read_records(Path(d) for d in runs_dirs if Path(d).exists())
    if not records:
        where = ", ".join(map(str, runs_dirs)) or "(no directory)"
        hint = f"; run `make sweep EXP={manifest.name}` first" if manifest is not None else ""
        raise ReportError(f"no result.json found under {where}{hint}")
    manifest = manifest or manifest_from_records(records)
    runs, notes = select(load_runs(records, manifest), manifest)
    summary = summarize(runs, manifest)
    cov = coverage(runs, summary, manifest, notes)
    paper = paper_frame(manifest, paper_dir)
    out = Path(out)
    files = _write_all(out, manifest, ours_view(summary, manifest), paper, cov, dpi)
    csv = with_paper(summary, paper)
    if manifest.group_by == "data":
        csv = csv.rename(columns={"transfer": "data"})
    csv.to_csv(out / "summary.csv", index=False)
    extra, frames = tuning.extra_sections(summary, manifest)  # a manifest's `tune` / `rank_against` sections
    if extra:
        (out / "table.md").write_text((out / "table.md").read_text().rstrip("\n") + "\n" + extra)
    for name, frame in frames.items():
        frame.to_csv(out / f"{name}.csv", index=False)
        files.append(out / f"{name}.csv")
    return Report(csv, cov, [*files, out / "summary.csv"])


def write_paper_figures(manifest: Manifest, out: str | Path, paper_dir: Path = PAPER_DIR, dpi: int = 90) -> list[Path]:
    """The paper's table and figures for one manifest, from `results/paper/` alone."""
    paper = paper_frame(manifest, paper_dir)
    if paper is None:
        return []
    return _write_all(Path(out), manifest, None, paper, None, dpi)
