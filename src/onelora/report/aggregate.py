"""Run records (`result.json`) -> one row per run -> mean ± std per method, and what is missing.

`load_runs` never raises on bad records: an unreadable file becomes a row with status `unreadable`
(its method and seed read from the run directory's path), and `coverage` lists it with every missing
seed and every run that did not end `ok`. Means and stds use only `ok` runs with a metric value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..run.record import effective_status, spell_bools
from .manifest import PAPER_DIR, ROOT, Group, Manifest, metric_from

RECORD = "result.json"
OK = "ok"
SEED_DIR = re.compile(r"seed(\d+)")
METHOD_ORDER = (
    "mora1", "mora6", "bitfit", "bias", "difffit", "lora", "lora_qkv", "vera", "dora", "onelora", "onelora_random",
    "norms", "gamma", "onelora_bias", "onelora_norms", "onelora_gamma", "onelora_bias_norms", "onelora_bias_gamma",
    "onelora_gamma_norms", "onelora_bias_gamma_norms", "head", "full",
)  # fmt: skip

Record = tuple[Path, dict[str, Any] | None]


def sweep_axes() -> frozenset[str]:
    """Override keys that do not change what a run computes: the sweep's axes (peft, seed) and where things are
    (paths, devices): the keys the run-folder names leave out (configs/hydra/default.yaml, exclude_keys)."""
    try:
        spec = yaml.safe_load((ROOT / "configs" / "hydra" / "default.yaml").read_text())
        keys = spec["job"]["config"]["override_dirname"]["exclude_keys"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        keys = []
    return frozenset({"peft", "seed", "experiment", "name", "rerun", *map(str, keys)})


def config_key(overrides: Any, axes: frozenset[str] = frozenset()) -> str:
    """A run's configuration beyond the sweep's axes: its other overrides, sorted ("" when there are none)."""
    if not isinstance(overrides, list):
        return ""
    kept = set()
    for o in map(str, overrides):
        key = o.lstrip("+").split("=", 1)[0]
        if key not in axes and not key.startswith(("hydra.", "hydra/", "paths.")):
            kept.add(spell_bools(o.lstrip("+")))  # a multirun records `False` where a single run has `false`
    return " ".join(sorted(kept))


def read_records(dirs: Iterable[Path]) -> list[Record]:
    """Every result.json under `dirs` (or the files themselves), with its parsed JSON or None if unreadable."""
    out: list[Record] = []
    for d in map(Path, dirs):
        for path in sorted([d] if d.is_file() else d.rglob(RECORD)):
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                data = None
            out.append((path, data if isinstance(data, dict) else None))
    return out


def manifest_from_records(records: Sequence[Record]) -> Manifest:
    """A manifest for runs reported without one: one group per data set, the seeds any method has."""
    recs = [r for _, r in records if r]
    data = sorted({str(r.get("data")) for r in recs if r.get("data") is not None})
    name = pd.Series([r.get("metric_name") for r in recs]).mode()
    direction = pd.Series([r.get("metric_direction") for r in recs]).mode()
    metric = metric_from({"name": name.iloc[0] if len(name) else "metric",
                          **({"direction": direction.iloc[0]} if len(direction) else {})}, "records")  # fmt: skip
    methods = {str(r.get("peft")) for r in recs} | {m for p, r in records if not r and (m := path_key(p)[0])}
    seeds = {int(r["seed"]) for r in recs if isinstance(r.get("seed"), int)}
    return Manifest(
        name="runs",
        title="Runs",
        groups=tuple(Group(d, d, Path(".")) for d in data) or (Group("runs", "runs", Path(".")),),
        methods=tuple(sorted(methods, key=method_sort_key)),
        seeds=tuple(sorted(seeds)) or (0,),
        metrics=(metric,),
        group_by="data",
    )


def method_sort_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def path_key(path: Path) -> tuple[str | None, int | None]:
    """(method, seed) from a run directory `.../<peft>/seed<k>/...`, for records that cannot be read."""
    parts = path.parts
    for i, part in enumerate(parts):
        if (m := SEED_DIR.fullmatch(part)) and i > 0:
            return parts[i - 1], int(m.group(1))
    return None, None


def _number(x: Any, scale: float = 1.0) -> float:
    try:
        v = float(x) * scale
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def metric_value(record: dict[str, Any], name: str, scale: float) -> float:
    """The run's best value if `name` is its monitored metric, else its final value of `name`."""
    if record.get("metric_name") == name and record.get("metric_best") is not None:
        return _number(record["metric_best"], scale)
    return _number((record.get("metrics") or {}).get(name), scale)


def _group_of(path: Path, record: dict[str, Any] | None, manifest: Manifest, by_name: bool) -> str:
    """The transfer label of the manifest group this record belongs to; "?" when it belongs to none.

    By the record's experiment name (or data set, without a manifest); by the directory it lies in; and when
    no record carries one of the manifest's names (`by_name` false: the user renamed the runs) or the record
    cannot be read, a single group takes it."""
    groups = manifest.groups
    if record is not None and manifest.group_by == "data":
        return str(record.get("data", groups[0].transfer))
    if record is not None and (hit := [g for g in groups if g.experiment == record.get("name")]):
        return hit[0].transfer
    for g in groups:
        if any(d.is_dir() and path.resolve().is_relative_to(d.resolve()) for d in g.dirs):
            return g.transfer
    return groups[0].transfer if len(groups) == 1 and (record is None or not by_name) else "?"


def load_runs(records: Sequence[Record], manifest: Manifest) -> pd.DataFrame:
    """One row per record: where it is, which (transfer, method, seed), its status, metrics, time, memory, params."""
    names = {g.experiment for g in manifest.groups}
    by_name = any(r and r.get("name") in names for _, r in records)
    axes = sweep_axes()
    rows = []
    for path, r in records:
        method, seed = path_key(path)
        row: dict[str, Any] = {"path": str(path), "transfer": _group_of(path, r, manifest, by_name), "method": method,
                               "seed": seed, "mtime": path.stat().st_mtime if path.exists() else 0.0}  # fmt: skip
        if r is None:
            rows.append(row | {"status": "unreadable", "error": "corrupt or partial JSON", "config": ""})
            continue
        total = r.get("time_total_s")
        if total is None and r.get("time_train_s") is not None:
            total = _number(r.get("time_train_s")) + _number(r.get("time_val_s") or 0.0)
        row.update(
            method=str(r.get("peft", method)),
            seed=r.get("seed", seed),
            status=effective_status(r),  # `running` whose process is gone on this host: interrupted
            config=config_key(r.get("overrides"), axes),
            error=r.get("error"),
            time_s=_number(total),
            peak_mem_frac=_number(r.get("peak_mem_frac")),
            peak_mem_bytes=_number(r.get("peak_mem_bytes")),
            peak_rss_bytes=_number(r.get("peak_rss_bytes")),
            **{k: _number(r.get(k)) for k in ("peft_params", "head_params", "trainable_params", "total_params")},
            **{f"v_{m.name}": metric_value(r, m.name, m.scale) for m in manifest.metrics},
        )
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("status", "error", "config", "time_s", "peak_mem_frac", "peak_mem_bytes", "peak_rss_bytes", "peft_params", "trainable_params",
                "total_params", *(f"v_{m.name}" for m in manifest.metrics)):  # fmt: skip
        if col not in df:
            df[col] = math.nan if col not in ("status", "error", "config") else None
    df["usable"] = (df.status == OK) & df[f"v_{manifest.metric.name}"].notna()
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    return df


def select(runs: pd.DataFrame, manifest: Manifest) -> tuple[pd.DataFrame, list[str]]:
    """The runs this manifest reports (its transfers and methods, one record per seed); notes on the others."""
    notes: list[str] = []
    other = runs[(runs.transfer == "?") & (runs.status != "unreadable")]  # unreadable ones stay, to be listed
    if len(other):
        names = ", ".join(sorted({g.experiment for g in manifest.groups}))
        notes.append(f"ignored {len(other)} record(s) of other experiments (not {names})")
    runs = runs.drop(other.index)
    extra = runs[~runs.method.isin(manifest.methods) & (runs.status != "unreadable")]
    for method, n in extra.groupby("method", dropna=False).size().items():
        notes.append(f"ignored {n} record(s) of method {method} (not in this manifest)")
    runs = runs.drop(extra.index)
    runs, conflict_notes = separate_configs(runs, manifest)
    notes += conflict_notes
    # the same seed twice (e.g. two override sets in one sweep dir): keep an ok one, then the newest
    runs = runs.assign(_rank=runs.usable.astype(int)).sort_values(["_rank", "mtime", "path"])
    dup = runs.duplicated(["transfer", "method", "seed"], keep="last") & runs.seed.notna()
    kept = runs[~dup].drop(columns="_rank")
    for _, r in runs[dup].iterrows():
        keep = kept[(kept.transfer == r.transfer) & (kept.method == r.method) & (kept.seed == r.seed)].path.iloc[0]
        notes.append(f"duplicate of {r.method} seed {r.seed} ({r.status}), not used: {r.path} (kept {keep})")
    return kept, notes


def separate_configs(runs: pd.DataFrame, manifest: Manifest) -> tuple[pd.DataFrame, list[str]]:
    """One configuration per (transfer, method): the ok runs are grouped by their overrides beyond the sweep's axes.

    One configuration: kept. Several, one of them the manifest group's own overrides: that one is kept and the
    others are set aside (noted). Several, none the manifest's: a conflict; no run of that method is averaged,
    each is listed with status `conflict` (the table never mixes two configurations, nor picks one silently)."""
    notes: list[str] = []
    axes = sweep_axes()
    expected = {g.transfer: config_key(list(g.overrides), axes) for g in manifest.groups}
    drop: list[Any] = []
    runs = runs.copy()
    for (transfer, method), sel in runs[runs.usable].groupby(["transfer", "method"], sort=False):
        configs = sel.groupby("config", sort=True).seed.apply(lambda s: sorted(int(x) for x in s.dropna()))
        if len(configs) < 2:
            continue
        where = f"{transfer} {method}" if len(manifest.transfers) > 1 else method
        listing = "; ".join(
            f"[{c or 'no overrides'}] seeds {', '.join(map(str, seeds))}" for c, seeds in configs.items()
        )
        mine = runs[(runs.transfer == transfer) & (runs.method == method)]
        if expected.get(transfer) in configs.index:
            other = mine[mine.config != expected[transfer]]
            drop += list(other.index)
            notes.append(f"set aside {len(other)} record(s) of {where} under other overrides than the manifest's "
                         f"({listing})")  # fmt: skip
        else:
            runs.loc[mine[mine.usable].index, ["status", "usable", "error"]] = [
                "conflict", False, f"{where} has ok runs under {len(configs)} configurations: {listing}"]  # fmt: skip
            notes.append(f"conflict: {where} has ok runs under {len(configs)} configurations ({listing}); none is "
                         "averaged: report each configuration from its own runs dir, or move the other runs aside")  # fmt: skip
    return runs.drop(drop), notes


def summarize(runs: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
    """One row per (transfer, method): n_ok, n_failed, n_missing, mean and sample std (ddof=1) over ok seeds."""
    rows = []
    for transfer in manifest.transfers:
        for method in manifest.methods:
            sel = runs[(runs.transfer == transfer) & (runs.method == method)]
            ok = sel[sel.usable]
            row: dict[str, Any] = {
                "transfer": transfer,
                "method": method,
                "n_ok": len(ok),
                "n_failed": len(sel) - len(ok),
                "n_missing": len(set(manifest.seeds) - {int(s) for s in sel.seed.dropna()}),
                "seeds_ok": " ".join(str(int(s)) for s in sorted(ok.seed.dropna())),
                "metric_name": manifest.metric.name,
            }
            for i, m in enumerate(manifest.metrics):  # pandas: the std of one value (ddof=1) is NaN
                key = "metric" if i == 0 else m.name
                row |= {f"{key}_mean": ok[f"v_{m.name}"].mean(), f"{key}_std": ok[f"v_{m.name}"].std(ddof=1)}
            row |= {
                "time_min_mean": (ok.time_s / 60).mean(),
                "time_min_std": (ok.time_s / 60).std(ddof=1),
                "peak_mem_frac_mean": ok.peak_mem_frac.mean(),
                "peak_mem_gb_mean": ok.peak_mem_bytes.mean() / 1e9,
                "peak_rss_gb_mean": ok.peak_rss_bytes.mean() / 1e9,  # CPU runs: the process's peak resident memory
            }
            for k in ("peft_params", "trainable_params", "total_params"):  # the same for every seed
                counts = sel[k].dropna()
                row[k] = int(counts.mode().iloc[0]) if len(counts) else pd.NA
            rows.append(row)
    df = pd.DataFrame(rows)
    for k in ("peft_params", "trainable_params", "total_params"):
        df[k] = df[k].astype("Int64")
    return df


def coverage(runs: pd.DataFrame, summary: pd.DataFrame, manifest: Manifest, notes: Sequence[str] = ()) -> list[str]:
    """Human-readable lines: expected vs found, then every missing seed and every run not used, by path."""
    expected = len(manifest.transfers) * len(manifest.methods) * len(manifest.seeds)
    n_ok = int(summary.n_ok.sum())
    lines = [f"{n_ok} of {expected} expected runs are ok and used "
             f"({len(manifest.transfers)} transfer(s) x {len(manifest.methods)} methods x seeds "
             f"{', '.join(map(str, manifest.seeds))})"]  # fmt: skip

    def where(transfer: str) -> str:
        return f"{transfer} " if len(manifest.transfers) > 1 else ""

    for _, s in summary.iterrows():
        if s.n_missing:
            sel = runs[(runs.transfer == s.transfer) & (runs.method == s.method)]
            seen = {int(x) for x in sel.seed.dropna()}
            missing = ", ".join(str(k) for k in manifest.seeds if k not in seen)
            lines.append(f"missing: {where(s.transfer)}{s.method} seed(s) {missing} (no result.json)")
    for _, r in runs[~runs.usable].sort_values("path").iterrows():
        why = r.status if r.status != OK else f"ok but no {manifest.metric.name} value"
        err = f": {r.error.splitlines()[0][:200]}" if isinstance(r.error, str) and r.error else ""
        lines.append(f"{why}: {where(r.transfer)}{r.method} seed {r.seed} at {r.path}{err}")
    if len(lines) > 1 and manifest.path is not None:
        lines.append(f"to complete: `make sweep EXP={manifest.name}` (runs that ended ok are skipped; "
                     f"failed ones resume from their last checkpoint), then `make report EXP={manifest.name}` again")  # fmt: skip
    return lines + list(notes)


def paper_frame(manifest: Manifest, paper_dir: Path = PAPER_DIR) -> pd.DataFrame | None:
    """The paper's table for this manifest, one row per (transfer, method), in the columns `summarize` uses.

    Numbers as floats, and the strings as printed in `<col>_text` (0.250 keeps its trailing zero)."""
    if not manifest.paper_table:
        return None
    raw = pd.read_csv(paper_dir / f"{manifest.paper_table}.csv", dtype=str, keep_default_na=False)
    labels = manifest.transfers
    if set(labels) & set(raw.transfer):
        raw = raw[raw.transfer.isin(labels)]
    elif len(labels) == 1:  # a manifest whose transfer label is not the paper's: the whole table is its group
        raw = raw.assign(transfer=labels[0])
    rows = []
    for (transfer, method), sel in raw.groupby(["transfer", "method"], sort=False):
        first = sel.iloc[0]
        row: dict[str, Any] = {"transfer": transfer, "method": method,
                               "paper_label": first.paper_label, "note": first.note}  # fmt: skip
        for i, m in enumerate(manifest.metrics):
            key = "metric" if i == 0 else m.name
            hit = sel[sel.metric_name == m.name]
            mean, std = (hit.iloc[0].metric_mean, hit.iloc[0].metric_std) if len(hit) else ("", "")
            row |= {f"{key}_mean": _number(mean), f"{key}_std": _number(std),
                    f"{key}_mean_text": mean, f"{key}_std_text": std}  # fmt: skip
        for col in ("time", "memory_pct", "params"):
            row[col] = _number(first[col])
        row |= {"time_text": first.time, "memory_pct_text": first.memory_pct, "params_text": first.params_printed}
        rows.append(row)
    df = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(manifest.methods)}
    return df.sort_values("method", key=lambda s: s.map(lambda m: order.get(m, len(order))), kind="stable")


def with_paper(summary: pd.DataFrame, paper: pd.DataFrame | None) -> pd.DataFrame:
    """summary.csv's paper columns: paper_metric_mean, paper_metric_std, paper_time, paper_memory_pct, paper_params."""
    if paper is None:
        return summary
    cols = [c for c in paper.columns if not c.endswith("_text") and c not in ("transfer", "method", "note")]
    renamed = paper[["transfer", "method", *cols]].rename(columns={c: f"paper_{c}" for c in cols if c != "paper_label"})
    return summary.merge(renamed, on=["transfer", "method"], how="left")
