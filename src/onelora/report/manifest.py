"""Experiment manifests (`experiments/<item>.yaml`): what to sweep for one paper item and how to report it.

```yaml
title: "Figure 6 / Table S9: ViT-B/16 (ImageNet-21k) fine-tuned to CIFAR-10"
experiment: cls_cifar10                 # the Hydra experiment (also the runs' `name`)
transfer: CIFAR-10                      # the paper table's `transfer` value for these runs
runs_dir: logs/multiruns/cls_cifar10    # default: logs/multiruns/<experiment>, relative to the repository root
overrides: []                           # extra Hydra overrides for the sweep
methods: [mora1, mora6, bitfit, ...]    # peft config names, in table order
seeds: [0, 1, 2, 3]
metric: {name: accuracy, direction: max, scale: 100}   # or `metrics: [...]`, the first one is plotted
time_unit: min                          # min | h
paper_table: tableS9                    # results/paper/<paper_table>.csv, shown beside ours
note: "..."                             # optional, printed under the report's title
tune:                                   # optional: one group's value of `key` chosen per method, from a grid
  group: mini_tuned                     #   the group (its experiment) that runs at each method's chosen value
  experiment: mini_select               #   the selection runs (their own split: never the reported one)
  key: task.optimizer.lr
  grid: [1.0e-3, 3.0e-3, 1.0e-2]
  seeds: [100]                          #   selection seeds (fresh ones, not the reported seeds)
rank_against: tableS9                   # optional: the report ranks the methods beside this paper table's
rank_beside: [results/mini]             # optional: and beside these committed reports' rankings (their ranking.csv)
```

A manifest spanning several transfers lists `groups: [{experiment, transfer, runs_dir?, overrides?}, ...]`
instead of the top-level `experiment` / `transfer` / `runs_dir`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]  # the repository (editable install)
EXPERIMENTS_DIR = ROOT / "experiments"
PAPER_DIR = ROOT / "results" / "paper"

# name -> (label printed in tables and axes, decimals of the mean, scale from the record to the printed unit)
METRICS: dict[str, tuple[str, int, float]] = {
    "accuracy": ("Accuracy [%]", 2, 100.0),
    "rmse": ("RMSE", 3, 1.0),
    "abs_rel": ("AbsRel", 4, 1.0),
    "val_loss": ("Val. loss", 3, 1.0),
    "loss": ("Loss", 3, 1.0),
    "fid": ("FID", 2, 1.0),
}
TOP_KEYS = {"title", "experiment", "transfer", "runs_dir", "overrides", "groups", "methods", "seeds", "metric",
            "metrics", "time_unit", "paper_table", "aliases", "note", "params", "tune", "rank_against",
            "rank_beside"}  # fmt: skip
PARAMS = ("peft_params", "trainable_params")  # what the params column counts: the method alone, or with the head
GROUP_KEYS = {"experiment", "transfer", "runs_dir", "overrides"}
TUNE_KEYS = {"group", "experiment", "key", "grid", "seeds", "runs_dir"}


class ManifestError(ValueError):
    """A manifest that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str  # "min" | "max"
    scale: float = 1.0
    decimals: int = 3

    @property
    def label(self) -> str:
        return METRICS.get(self.name, (self.name, 0, 1.0))[0]


@dataclass(frozen=True)
class Group:
    experiment: str
    transfer: str  # the paper table's `transfer` (data set or SOURCE->TARGET); default: the experiment name
    runs_dir: Path
    overrides: tuple[str, ...] = ()

    @property
    def dirs(self) -> tuple[Path, Path]:
        """Where its runs are: the multirun dir, and logs/runs/<experiment> for single runs."""
        return self.runs_dir, runs_root() / "logs" / "runs" / self.experiment


@dataclass(frozen=True)
class Tune:
    """A value chosen per method on selection runs, then used by one group (scripts/sweep.py runs both)."""

    group: str  # the experiment of the group that uses the chosen values
    experiment: str
    runs_dir: Path
    key: str
    grid: tuple[float, ...]
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class Manifest:
    name: str
    title: str
    groups: tuple[Group, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    metrics: tuple[Metric, ...]
    time_unit: str = "min"
    paper_table: str | None = None
    aliases: tuple[str, ...] = field(default=())
    note: str = ""  # printed under the report's title (e.g. how the paper's numbers differ from ours)
    params: str = "peft_params"  # the record count shown as params (the paper's DiT table includes the head)
    path: Path | None = None
    group_by: str = "name"  # the record field matched against Group.experiment ("data" without a manifest)
    tune: Tune | None = None
    rank_against: str | None = None  # a paper table whose ranking the report shows beside ours
    rank_beside: tuple[str, ...] = ()  # committed report folders (repository-relative) whose ranks are shown too

    @property
    def metric(self) -> Metric:
        return self.metrics[0]

    @property
    def transfers(self) -> list[str]:
        return [g.transfer for g in self.groups]


def metric_from(spec: Any, where: str) -> Metric:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ManifestError(f"{where}: a metric needs at least a name, e.g. {{name: rmse, direction: min}}")
    name = str(spec["name"])
    _, decimals, scale = METRICS.get(name, (name, 3, 1.0))
    direction = spec.get("direction", "max" if name == "accuracy" else "min")
    if direction not in ("min", "max"):
        raise ManifestError(f"{where}: metric direction must be min or max, got {direction!r}")
    return Metric(name, direction, float(spec.get("scale", scale)), int(spec.get("decimals", decimals)))


def runs_root() -> Path:
    """Where relative runs_dir paths start: $ONELORA_ROOT (as configs/paths does), else the repository."""
    return Path(os.environ.get("ONELORA_ROOT") or ROOT)


def _group(spec: dict[str, Any], where: str) -> Group:
    unknown = set(spec) - GROUP_KEYS
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {sorted(unknown)}; a group has {sorted(GROUP_KEYS)}")
    if not spec.get("experiment"):
        raise ManifestError(f"{where}: names no Hydra `experiment`")
    exp = str(spec["experiment"])
    runs = Path(spec.get("runs_dir") or f"logs/multiruns/{exp}")
    runs = runs if runs.is_absolute() else runs_root() / runs
    return Group(exp, str(spec.get("transfer") or exp), runs, tuple(str(o) for o in spec.get("overrides") or ()))


def _tune(spec: Any, groups: tuple[Group, ...], where: str) -> Tune:
    if not isinstance(spec, dict) or set(spec) - TUNE_KEYS or not {"group", "experiment", "key", "grid"} <= set(spec):
        raise ManifestError(f"{where}: `tune` needs group, experiment, key, grid (and optionally seeds, runs_dir)")
    if spec["group"] not in {g.experiment for g in groups}:
        raise ManifestError(f"{where}: tune.group {spec['group']!r} is none of the groups' experiments")
    grid, seeds = spec["grid"], spec.get("seeds", [0])
    if not isinstance(grid, list) or not grid or not all(isinstance(v, (int, float)) for v in grid):
        raise ManifestError(f"{where}: tune.grid must be a list of numbers, got {grid!r}")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(v, int) for v in seeds):
        raise ManifestError(f"{where}: tune.seeds must be a list of integers, got {seeds!r}")
    exp = str(spec["experiment"])
    runs = Path(spec.get("runs_dir") or f"logs/multiruns/{exp}")
    runs = runs if runs.is_absolute() else runs_root() / runs
    return Tune(str(spec["group"]), exp, runs, str(spec["key"]), tuple(float(v) for v in grid), tuple(seeds))


def parse_manifest(data: Any, name: str, path: Path | None = None) -> Manifest:
    where = str(path or name)
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: a manifest is a YAML mapping")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    if "groups" in data:
        if "experiment" in data or "runs_dir" in data:
            raise ManifestError(f"{where}: give either `groups` or a top-level `experiment`, not both")
        groups = tuple(_group(g, f"{where}: groups[{i}]") for i, g in enumerate(data["groups"] or []))
    else:
        groups = (_group({k: data[k] for k in GROUP_KEYS if k in data}, where),)
    if not groups:
        raise ManifestError(f"{where}: `groups` is empty")
    if len({g.transfer for g in groups}) < len(groups):
        raise ManifestError(f"{where}: two groups share a transfer label; give each its own `transfer`")
    methods = tuple(str(m) for m in data.get("methods") or ())
    if not methods:
        raise ManifestError(f"{where}: lists no `methods`")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ManifestError(f"{where}: `seeds` must be a list of integers, got {seeds!r}")
    if "metric" in data and "metrics" in data:
        raise ManifestError(f"{where}: give `metric` or `metrics`, not both")
    specs = data.get("metrics") or ([data["metric"]] if "metric" in data else [])
    if not specs:
        raise ManifestError(f"{where}: names no `metric`")
    metrics = tuple(metric_from(s, where) for s in specs)
    unit = data.get("time_unit", "min")
    if unit not in ("min", "h"):
        raise ManifestError(f"{where}: time_unit must be min or h, got {unit!r}")
    params = data.get("params", "peft_params")
    if params not in PARAMS:
        raise ManifestError(f"{where}: params must be one of {', '.join(PARAMS)}, got {params!r}")
    paper = data.get("paper_table")
    if paper is not None and not (PAPER_DIR / f"{paper}.csv").is_file():
        raise ManifestError(f"{where}: paper_table {paper!r} is not in {PAPER_DIR} (e.g. tableS9)")
    for key in ("paper_table", "rank_against"):
        table = data.get(key)
        if table is not None and not (PAPER_DIR / f"{table}.csv").is_file():
            raise ManifestError(f"{where}: {key} {table!r} is not in {PAPER_DIR} (e.g. tableS9)")
    return Manifest(
        name=name,
        title=str(data.get("title") or name),
        groups=groups,
        methods=methods,
        seeds=tuple(seeds),
        metrics=metrics,
        time_unit=unit,
        paper_table=paper,
        aliases=tuple(str(a) for a in data.get("aliases") or ()),
        note=" ".join(str(data.get("note") or "").split()),
        params=params,
        path=path,
        tune=_tune(data["tune"], groups, where) if data.get("tune") is not None else None,
        rank_against=data.get("rank_against"),
        rank_beside=tuple(str(f) for f in data.get("rank_beside") or ()),
    )


def manifest_paths(directory: Path = EXPERIMENTS_DIR) -> list[Path]:
    """The manifests in natural order (fig2a, ..., fig8, fig10, table2, tableS1)."""
    return sorted(directory.glob("*.yaml"), key=lambda p: [(0, int(t)) if t.isdigit() else (1, t)
                                                            for t in re.split(r"(\d+)", p.stem) if t])  # fmt: skip


def load_manifest(spec: str | Path, directory: Path = EXPERIMENTS_DIR) -> Manifest:
    """Load a manifest from a path, or by name (`fig6`) or alias (`fig6_cifar10`) from `experiments/`."""
    path = Path(spec)
    if not path.is_file():
        candidates = [p for p in manifest_paths(directory) if p.stem == path.stem]
        candidates += [p for p in manifest_paths(directory) if path.stem in (_read(p).get("aliases") or [])]
        if not candidates:
            known = ", ".join(p.stem for p in manifest_paths(directory))
            raise ManifestError(f"unknown experiment manifest {str(spec)!r}; known: {known}")
        path = candidates[0]
    return parse_manifest(_read(path), path.stem, path)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ManifestError(f"{path}: cannot read the manifest ({e})") from None
    return data if isinstance(data, dict) else {}
