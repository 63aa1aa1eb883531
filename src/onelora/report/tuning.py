"""A manifest's `tune`: each method's value chosen on its selection runs (`choose`, which the sweep uses too), and
the report's sections for it and for `rank_against` / `rank_beside` (our ranking beside a paper table's and other
committed reports').
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from .aggregate import read_records
from .manifest import PAPER_DIR, ROOT, Manifest
from .plots import method_label


def selection_results(manifest: Manifest) -> dict[str, dict[float, float]]:
    """method -> grid value -> the metric's mean over the selection seeds (ok runs only)."""
    tune = manifest.tune
    assert tune is not None
    values: dict[tuple[str, float], list[float]] = {}
    for _, r in read_records([tune.runs_dir] if tune.runs_dir.is_dir() else []):
        if not r or r.get("status") != "ok" or r.get("metric_best") is None or r.get("seed") not in tune.seeds:
            continue
        value = _override(r.get("overrides") or [], tune.key)
        if value is not None and any(math.isclose(value, v, rel_tol=1e-9) for v in tune.grid):
            values.setdefault((str(r.get("peft")), value), []).append(float(r["metric_best"]))
    out: dict[str, dict[float, float]] = {}
    for (method, value), xs in values.items():
        out.setdefault(method, {})[value] = sum(xs) / len(xs)
    return out


def choose(manifest: Manifest) -> dict[str, float]:
    """Each method's best grid value on the selection runs (ties: the smaller value); methods without any ok
    selection run are missing."""
    sign = 1.0 if manifest.metric.direction == "max" else -1.0
    return {m: max(sorted(res), key=lambda v: sign * res[v]) for m, res in selection_results(manifest).items() if res}


def _override(overrides: Sequence[str], key: str) -> float | None:
    for o in overrides:
        k, _, v = o.lstrip("+").partition("=")
        if k == key:
            try:
                return float(v)
            except ValueError:
                return None
    return None


def selection_frame(manifest: Manifest) -> pd.DataFrame:
    """One row per (method, value): the selection metric (mean over selection seeds, printed unit) and `chosen`."""
    results, chosen = selection_results(manifest), choose(manifest)
    m = manifest.metric
    rows = [{"method": method, "value": v, "metric": results.get(method, {}).get(v, math.nan) * m.scale,
             "chosen": chosen.get(method) == v} for method in manifest.methods for v in manifest.tune.grid]  # fmt: skip
    return pd.DataFrame(rows)


def selection_markdown(frame: pd.DataFrame, manifest: Manifest) -> str:
    tune, m = manifest.tune, manifest.metric
    values = list(tune.grid)
    lines = [
        "## Selection of " + f"`{tune.key}`",
        "",
        f"{m.label} of the selection runs (`{tune.experiment}`: a split held out from the training data, seeds "
        f"{', '.join(map(str, tune.seeds))}; the reported runs' validation split is never used); **bold**: the "
        f"value each method runs at in group `{tune.group}`.",
        "",
        "| Method | " + " | ".join(f"{v:g}" for v in values) + " |",
        "|---|" + "---:|" * len(values),
    ]
    for method in manifest.methods:
        cells = []
        for v in values:
            row = frame[(frame.method == method) & (frame.value == v)].iloc[0]
            text = "–" if math.isnan(row.metric) else f"{row.metric:.{m.decimals}f}"
            cells.append(f"**{text}**" if row.chosen else text)
        lines.append(f"| {method_label(method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ranking_frame(summary: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
    """Per method: the paper's metric and rank, and ours and our rank per transfer (ranks among the methods the
    paper reports, 1 = best)."""
    paper = pd.read_csv(PAPER_DIR / f"{manifest.rank_against}.csv")
    paper = paper[paper.metric_name == manifest.metric.name].drop_duplicates("method").set_index("method")
    ascending = manifest.metric.direction == "min"
    out = pd.DataFrame({"method": list(manifest.methods)})
    out["paper"] = out.method.map(paper.metric_mean)
    out["paper_rank"] = out.paper.rank(ascending=ascending, method="min")
    for transfer in manifest.transfers:
        ours = summary[summary.transfer == transfer].set_index("method").metric_mean  # already in the printed unit
        out[transfer] = out.method.map(ours)
        out[f"{transfer} rank"] = out[transfer].where(out.paper.notna()).rank(ascending=ascending, method="min")
    for folder in manifest.rank_beside:  # another committed report's ranks (e.g. make mini's), where it exists
        path = ROOT / folder / "ranking.csv"
        other = pd.read_csv(path).set_index("method") if path.is_file() else pd.DataFrame()
        for col in [c for c in other.columns if c.endswith(" rank") and c != "paper_rank" and ": " not in c]:
            # re-ranked among the methods ranked here (another paper table may report other methods)
            out[f"{folder}: {col}"] = out.method.map(other[col]).where(out.paper.notna()).rank(method="min")
    return out


def _beside(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if ": " in c]


def ranking_markdown(frame: pd.DataFrame, manifest: Manifest) -> str:
    m, table = manifest.metric, manifest.rank_against
    head = ["Method", f"Paper ({table}) {m.label}", "rank"]
    for t in manifest.transfers:
        head += [f"Ours, {t}", "rank"]
    head += [f"rank in {c.removesuffix(' rank')}" for c in _beside(frame)]
    missing = [f for f in manifest.rank_beside if not any(c.startswith(f"{f}: ") for c in _beside(frame))]
    lines = [f"## Ranking beside the paper's {table}", "",
             "Ranks among the methods the paper reports (1 = best); Spearman's ρ between the paper's ranking and "
             "ours: " + ", ".join(f"{t} {spearman(frame, t):+.2f}" for t in manifest.transfers) + "."
             + "".join(f" No ranking in {f} (its ranking.csv is missing)." for f in missing), "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]  # fmt: skip

    def num(x: float, rank: bool = False) -> str:
        return "–" if pd.isna(x) else (f"{int(x)}" if rank else f"{x:.{m.decimals}f}")

    for _, r in frame.iterrows():
        cells = [method_label(r.method), num(r.paper), num(r.paper_rank, True)]
        for t in manifest.transfers:
            cells += [num(r[t]), num(r[f"{t} rank"], True)]
        cells += [num(r[c], True) for c in _beside(frame)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def spearman(frame: pd.DataFrame, transfer: str) -> float:
    both = frame[["paper_rank", f"{transfer} rank"]].dropna()
    return float(both.corr(method="spearman").iloc[0, 1]) if len(both) > 2 else math.nan


def extra_sections(summary: pd.DataFrame, manifest: Manifest) -> tuple[str, dict[str, pd.DataFrame]]:
    """The Markdown to append to table.md, and the frames to write as CSV (name -> frame)."""
    text, frames = "", {}
    if manifest.tune is not None:
        frames["selection"] = selection_frame(manifest)
        text += "\n" + selection_markdown(frames["selection"], manifest)
    if manifest.rank_against:
        frames["ranking"] = ranking_frame(summary, manifest)
        text += "\n" + ranking_markdown(frames["ranking"], manifest)
    return text, frames
