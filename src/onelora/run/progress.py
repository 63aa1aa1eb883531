"""Progress of a sweep, as one bar: runs report events to a file, the sweep draws them.

A run started with `ONELORA_PROGRESS=<file>` appends one JSON line per event to that file: `start` (which run,
how many epochs), `epoch` (the task metric and its best so far), `end` (the record's status, best value and time)
and `skip` (a run already done). `scripts/sweep.py --progress` sends each multirun's output to a log file and
shows only a bar over the runs and one line per finished run (`SweepDisplay`). Lightweight on purpose: the
sweep imports it without torch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ENV = "ONELORA_PROGRESS"


def emit(event: str, **fields: Any) -> None:
    """Append one event to $ONELORA_PROGRESS (nothing when unset). One short write per line: concurrent runs
    appending to the same file do not interleave inside a line."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"event": event, "t": round(time.time(), 3), **fields}, default=str) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError:  # the sweep that reads it is gone (its folder with it): a run never fails over its progress bar
        pass


@dataclass
class EventTail:
    """New complete lines of an event file since the last call."""

    path: Path
    offset: int = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind("\n") + 1  # a line still being written waits for the next call
        self.offset += len(chunk[:end].encode("utf-8"))
        events = []
        for line in chunk[:end].splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events


def _value(x: Any, scale: float) -> str:
    return "n/a" if x is None else f"{float(x) * scale:.2f}" if scale != 1 else f"{float(x):.4g}"


@dataclass
class SweepDisplay:
    """A tqdm bar over `total` runs; the current run's method, seed, epoch and metric beside it; one line per run
    that ends. `scale` turns the recorded metric into the printed unit (100 for accuracy in %)."""

    total: int
    scale: float = 1.0
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    finished: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, unit="run", file=self.stream, dynamic_ncols=True,
                        bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} runs [{elapsed}<{remaining}] {postfix}")  # fmt: skip
        self.bar.set_description("runs")
        self.current: dict[str, dict[str, Any]] = {}  # per event source: the run in progress

    def handle(self, source: str, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "start":
            self.current[source] = ev
            if ev.get("pretraining"):
                self.write(f"pre-training {ev.get('model')} ({ev.get('data')}, {ev.get('epochs')} epochs; once, "
                           f"then cached)")  # fmt: skip
        elif kind == "epoch":
            self.current.setdefault(source, {}).update(epoch=ev.get("epoch"), epochs=ev.get("epochs"),
                                                       metric=ev.get("metric"), value=ev.get("value"))  # fmt: skip
        elif kind in ("end", "skip"):
            run = self.current.pop(source, {})
            if run.get("pretraining") or ev.get("pretraining"):
                self.write(f"  pre-trained: {ev.get('metric')} {_value(ev.get('best'), self.scale)} "
                           f"({ev.get('time_s', 0):.0f} s) -> {ev.get('dir')}")  # fmt: skip
            else:
                self.finished.append(ev)
                self.write(self.line(ev))
                self.bar.update(1)
        self._postfix()

    def line(self, ev: dict[str, Any]) -> str:
        status = "done" if ev.get("event") == "skip" else ev.get("status", "?")
        extra = "" if ev.get("event") != "skip" else " (already done)"
        lr = f" lr {ev['lr']:g}" if isinstance(ev.get("lr"), (int, float)) else ""
        return (f"{status:<8} {ev.get('name', '')} {ev.get('peft', '?'):<14} seed {ev.get('seed')}{lr}  "
                f"{ev.get('metric', '')} {_value(ev.get('best'), self.scale)}  {ev.get('time_s') or 0:.1f} s{extra}")  # fmt: skip

    def _postfix(self) -> None:
        parts = []
        for run in self.current.values():
            what = "pre-training" if run.get("pretraining") else f"{run.get('peft', '?')} seed {run.get('seed')}"
            if run.get("epoch") is not None:
                what += f" epoch {run['epoch']}/{run.get('epochs')} {run.get('metric')} {_value(run.get('value'), self.scale)}"
            parts.append(what)
        self.bar.set_postfix_str(" | ".join(parts), refresh=True)

    def write(self, text: str) -> None:
        self.bar.write(text, file=self.stream)

    def close(self) -> None:
        self.bar.close()


def run_event(event: str, cfg: Any, record: dict[str, Any] | None = None) -> None:
    """`emit` for a run: which run (from its config), and for `end`/`skip` how it ended (from its record)."""
    if not os.environ.get(ENV):
        return
    fields: dict[str, Any] = {
        "name": cfg.name, "peft": cfg.peft.name, "seed": cfg.seed, "model": cfg.model.name, "data": cfg.data.name,
        "dir": str(cfg.paths.output_dir), "epochs": cfg.trainer.get("max_epochs"), "metric": cfg.task.metric.name,
        "lr": (cfg.task.get("optimizer") or {}).get("lr"), "pretraining": bool(cfg.paths.get("pretrain_dir")),
    }  # fmt: skip
    if record is not None:
        fields |= {"status": record.get("status"), "best": record.get("metric_best"),
                   "time_s": record.get("time_total_s")}  # fmt: skip
    emit(event, **fields)
