"""Launch the Hydra multirun(s) an experiment manifest describes, one per transfer group.

    python scripts/sweep.py experiments/fig6.yaml [--print] [hydra overrides ...]
    python scripts/sweep.py fig6 hydra/launcher=slurm hydra.launcher.partition=gpu
    python scripts/sweep.py mini --progress --jobs 2     # one progress bar; two multiruns at a time

runs `python run.py -m experiment=<exp> peft=<m1,m2,...> seed=<0,1,...> <manifest overrides> <extra args>`.
A manifest with `tune` first runs its selection sweep, then each method at its chosen value (onelora.commands.launch).
With --progress each multirun's output is appended to <runs_dir>/sweep-<k>.log and the terminal shows one bar over
the runs and one line per finished run. Every group runs whatever happened to the others; the exit code is
the number of jobs that failed (a multirun that crashed counts one), at most 125. Ctrl-C (or `kill`) stops every
multirun, whose run cut short records `interrupted` (the same command resumes it), and exits 130.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from onelora.commands.launch import Command, commands, execute, selection_commands
from onelora.report import Manifest, ManifestError, load_manifest
from onelora.report.tuning import choose
from onelora.run.progress import SweepDisplay

ROOT = Path(__file__).resolve().parents[1]


def stages(manifest: Manifest, extra: list[str], jobs: int, chosen: dict[str, float] | None) -> list[list[Command]]:
    """What to run, in order (the tuned group's commands need the selection's outcome: `chosen`)."""
    first = selection_commands(manifest, extra, sys.executable, jobs) if manifest.tune else []
    return [s for s in (first, commands(manifest, extra, sys.executable, jobs, chosen)) if s]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", help="experiments/<name>.yaml, or a manifest name like fig6")
    ap.add_argument("--print", action="store_true", dest="dry", help="print the command(s), run nothing")
    ap.add_argument("--progress", action="store_true", help="one progress bar; each multirun's output to a log")
    ap.add_argument("--jobs", type=int, default=1, help="multiruns at a time (default 1)")
    args, extra = ap.parse_known_args(argv)
    try:
        manifest = load_manifest(args.manifest)
    except ManifestError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    tune = manifest.tune
    if args.dry:
        for stage in stages(manifest, extra, args.jobs, None):
            for cmd in stage:
                print(cmd.text.replace(f"{tune.key}=nan", f"{tune.key}=<chosen>") if tune else cmd.text)
        return 0
    # `kill` and a closed terminal stop the sweep as Ctrl-C does (its multiruns lead their own process groups)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return sweep(manifest, extra, args.progress, args.jobs)
    except KeyboardInterrupt:  # launch.execute has stopped every multirun and waited for it to end
        print(f"sweep: interrupted; every multirun stopped, and the runs cut short are recorded `interrupted`: the "
              f"same command resumes them (`make report EXP={manifest.name}` lists what finished)", file=sys.stderr)  # fmt: skip
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def sweep(manifest: Manifest, extra: list[str], progress: bool, jobs: int) -> int:
    """Run every stage; the exit code (see the module's docstring)."""
    tune = manifest.tune
    plan = stages(manifest, extra, jobs, None)
    display = None
    if progress:
        scale = manifest.metric.scale if manifest.metric.scale != 1 else 1.0
        display = SweepDisplay(total=sum(c.runs for s in plan for c in s), scale=scale)
        display.write(f"{manifest.title}: {display.total} runs; full output in each multirun's folder")
    rc = 0
    try:
        for i, stage in enumerate(plan):
            if tune and i == len(plan) - 1:  # the selection is done: each method's value
                chosen = choose(manifest)
                missing = [m for m in manifest.methods if m not in chosen]
                if missing:
                    print(f"sweep: no ok selection run for {', '.join(missing)}; see {tune.runs_dir}", file=sys.stderr)
                    rc = rc or 1
                line = ", ".join(f"{m} {v:g}" for m, v in chosen.items())
                (display.write if display else print)(f"chosen {tune.key}: {line}")
                stage = stages(manifest, extra, jobs, chosen)[-1]
            rc = min(rc + execute(stage, jobs, display), 125)  # every stage runs; the exit code counts failed jobs
    finally:
        if display is not None:
            display.close()
    if rc:
        print(f"sweep: some multiruns failed; `make report EXP={manifest.name}` lists what finished", file=sys.stderr)
        return rc
    print(f"done; now: make report EXP={manifest.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
