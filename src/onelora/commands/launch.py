"""What `scripts/sweep.py` launches for a manifest, and how: the Hydra multirun commands and running them (several
at a time, optionally behind one progress bar); the per-method choice of a tuned value (a manifest's `tune`) is
`onelora.report.tuning.choose`.

Stages run in order; the commands of one stage may run in parallel (`jobs`). A manifest with `tune` has two
stages: the selection runs (every method x every grid value, on their own split), then the groups, the tuned
group once per chosen value with the methods that chose it.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..report.manifest import Group, Manifest
from ..run.progress import EventTail, SweepDisplay

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Command:
    argv: list[str]
    runs: int  # how many runs it launches (for the progress bar)
    label: str  # unique among the commands run together
    log: Path  # where its output goes when a progress bar is shown

    @property
    def text(self) -> str:
        return shlex.join(self.argv)


def multirun(python: str, experiment: str, methods: Sequence[str], seeds: Sequence[int], *rest: str) -> list[str]:
    return [python, "run.py", "-m", f"experiment={experiment}", f"peft={','.join(methods)}",
            f"seed={','.join(map(str, seeds))}", *rest]  # fmt: skip


def split(methods: Sequence[str], parts: int) -> list[list[str]]:
    """`parts` interleaved chunks (slow and fast methods mixed), none empty."""
    return [list(methods[i::parts]) for i in range(max(1, min(parts, len(methods))))]


def group_commands(manifest: Manifest, group: Group, extra: Sequence[str], python: str, jobs: int = 1,
                   chosen: dict[str, float] | None = None) -> list[Command]:  # fmt: skip
    """The multirun(s) of one group: one command (split in `jobs` parts), or for the tuned group one per value."""
    tune = manifest.tune
    if tune is None or group.experiment != tune.group:
        batches = [(m, ()) for m in split(manifest.methods, jobs)]
    else:
        by_value: dict[float, list[str]] = {}
        for method in manifest.methods:  # a method without a chosen value (its selection failed) is not run
            if chosen is None or method in chosen:
                by_value.setdefault(math.nan if chosen is None else chosen[method], []).append(method)
        batches = [(m, (f"{tune.key}={v:g}",)) for v, m in by_value.items()]
    n, tag = len(manifest.seeds), group.experiment
    return [Command(multirun(python, tag, m, manifest.seeds, *group.overrides, *o, *extra), len(m) * n,
                    f"{tag}.{i}", group.runs_dir / f"sweep-{i}.log") for i, (m, o) in enumerate(batches)]  # fmt: skip


def selection_commands(manifest: Manifest, extra: Sequence[str], python: str, jobs: int = 1) -> list[Command]:
    tune = manifest.tune
    assert tune is not None
    grid = f"{tune.key}={','.join(f'{v:g}' for v in tune.grid)}"
    n = len(tune.seeds) * len(tune.grid)
    return [Command(multirun(python, tune.experiment, m, tune.seeds, grid, *extra), len(m) * n,
                    f"{tune.experiment}.{i}", tune.runs_dir / f"sweep-{i}.log")
            for i, m in enumerate(split(manifest.methods, jobs))]  # fmt: skip


def commands(manifest: Manifest, extra: Sequence[str], python: str = sys.executable, jobs: int = 1,
             chosen: dict[str, float] | None = None) -> list[Command]:  # fmt: skip
    """Every group's multirun(s); the tuned group's need `chosen` (else its value reads `nan`)."""
    return [c for g in manifest.groups for c in group_commands(manifest, g, extra, python, jobs, chosen)]


@dataclass
class _Running:
    cmd: Command
    proc: subprocess.Popen
    tail: EventTail
    log: IO[str] | None
    started: bool = False  # has a run of its own (not a shared first-use step) started or been skipped?


def execute(cmds: Sequence[Command], jobs: int = 1, display: SweepDisplay | None = None) -> int:
    """Run the commands, up to `jobs` at once, every one whatever the others did; the number of failed jobs (run.py's
    multirun exit code counts them; a multirun that crashed or was killed counts one), at most 125; 0 when all succeed.

    The first command runs alone until its first run starts, so a first-use step every run shares (the
    quickstart's pre-training) is made once. With a display, each command's output goes to
    `cmd.log` and its runs' events drive the bar; without, output goes to the terminal."""
    events = Path(tempfile.mkdtemp(prefix="onelora-sweep-"))  # one event file per command
    running: list[_Running] = []
    try:
        return _execute(cmds, jobs, display, events, running)
    except KeyboardInterrupt:  # Ctrl-C: every multirun stops (its run records `interrupted`) before the sweep does
        stop([r.proc for r in running])
        raise
    finally:
        for r in running:
            if r.log is not None:
                r.log.close()
        shutil.rmtree(events, ignore_errors=True)  # after every multirun ended: they write their events there


def stop(procs: Sequence[subprocess.Popen], grace: float = 60.0) -> None:
    """Stop the multiruns and wait for them: SIGINT first (Lightning stops at the step's end, the run records
    `interrupted` and its process exits 130), SIGTERM for one still running after `grace` seconds (or at a second
    Ctrl-C), then SIGKILL. Each multirun leads its own process group, so its jobs get the signal too."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 30.0), (signal.SIGKILL, 5.0)):
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        try:
            while alive and time.monotonic() < deadline:
                time.sleep(0.1)
                alive = [p for p in alive if p.poll() is None]
        except KeyboardInterrupt:  # another Ctrl-C: do not wait for the graceful stop
            continue
        if not alive:
            return


def _execute(cmds: Sequence[Command], jobs: int, display: SweepDisplay | None, events: Path,
             running: list[_Running]) -> int:  # fmt: skip
    pending, rc = list(cmds), 0
    while pending or running:
        while pending and len(running) < jobs and all(r.started for r in running):
            cmd = pending.pop(0)
            env = {**os.environ, "ONELORA_PROGRESS": str(events / f"{cmd.label}.jsonl")}
            log = None
            if display is not None:
                cmd.log.parent.mkdir(parents=True, exist_ok=True)
                log = open(cmd.log, "a")  # noqa: SIM115  # closed when the process ends; a resumed sweep appends
            else:
                print(cmd.text, flush=True)
            # its own process group: a terminal's Ctrl-C reaches the sweep alone, which stops each multirun once
            proc = subprocess.Popen(cmd.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT if log else None,
                                    start_new_session=True)  # fmt: skip
            running.append(_Running(cmd, proc, EventTail(events / f"{cmd.label}.jsonl"), log))
        time.sleep(0.2)
        for r in list(running):
            done = r.proc.poll() is not None
            for ev in r.tail.read():
                if display is not None:
                    display.handle(r.cmd.label, ev)
                r.started |= ev.get("event") in ("start", "skip") and not ev.get("pretraining")
            if not done:
                continue
            running.remove(r)
            if r.log is not None:
                r.log.close()
            if (code := r.proc.returncode) != 0:
                rc = min(rc + (code if code > 0 else 1), 125)
                where = f"; its output: {r.cmd.log}" if display is not None else ""
                msg = f"sweep: {r.cmd.text} exited with {code}{where}"
                display.write(msg) if display is not None else print(msg, file=sys.stderr)
    return rc
