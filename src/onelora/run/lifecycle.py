"""A run's context: the lock, the record and its status on every kind of exit.

    with run_context(cfg, previous) as run:   # lock taken, result.json says `running`
        ...build, fit, export; fill run.record...
    # result.json says ok, diverged, interrupted (SIGTERM or Ctrl-C) or failed; the lock is released

| exit                                   | status      | then                                                        |
|----------------------------------------|-------------|-------------------------------------------------------------|
| the block ends                         | as filled   | the summary line                                            |
| the task diverged (`DivergedError`)    | diverged    | one line on stderr, the summary line; the run returns       |
| SIGTERM (Lightning stops at a step)    | interrupted | the summary line; requeued under submitit, else exit 143    |
| Ctrl-C in training (Lightning's stop)  | interrupted | the summary line; exit 130, as a shell reports SIGINT       |
| Ctrl-C or SIGTERM before the trainer   | interrupted | the exception goes on (the pre-training run was stopped)    |
| a user error Hydra wrapped             | failed      | the user error itself goes on: one line, not a traceback    |
| any other exception                    | failed      | it goes on                                                  |
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..errors import user_errors
from .progress import run_event
from .record import RECORD, acquire_lock, base_record, effective_status, release_lock, write_json_atomic
from .record import now as _now


def is_rank_zero() -> bool:
    """Global rank 0: Lightning's own view (RANK, LOCAL_RANK, SLURM_PROCID...; the global rank once a strategy set it)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


@dataclass
class Run:
    """What a run's exit needs to know: its record, and the parts built so far (None until built)."""

    path: Path  # result.json
    record: dict[str, Any]
    lock: Any = None  # held by rank 0 only; None on the other processes
    task: Any = None
    trainer: Any = None
    monitor: Any = None  # the EfficiencyMonitor, whose summary the record takes at the end (unless taken before)
    preemption: Any = None

    def interrupted(self, by: str) -> None:
        """Stopped by a signal: resumable, with what it had measured so far."""
        self.record.update(status="interrupted", error=f"stopped by {by}; re-running the same command resumes")
        self.record.update(
            metric_best=getattr(self.task, "best", None), metrics=getattr(self.task, "final_metrics", {})
        )


@contextmanager
def run_context(cfg: DictConfig, previous: dict[str, Any] | None) -> Iterator[Run]:
    """Take the run directory's lock, write the `running` record, and on any exit write the final one (the table in
    this module's docstring), release the lock and restore what the run changed (torch's threads)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from ..tasks.base import DivergedError
    from .callbacks.preemption import EXIT_SIGTERM

    out = Path(cfg.paths.output_dir)
    # one process per run directory (a second one stops here with one line); the record says `running` from now
    run = Run(out / RECORD, base_record(cfg), acquire_lock(out) if is_rank_zero() else None)
    if previous:
        run.record["started_at"] = previous.get("started_at", run.record["started_at"])
    if run.lock is not None:
        write_json_atomic(run.path, run.record)
    threads = torch.get_num_threads()  # restored at the end: cpu_threads holds for this run only
    exit_code = 0
    try:
        yield run
    except DivergedError as e:
        run.record.update(status="diverged", error=str(e))
        print(f"run diverged: {e}", file=sys.stderr)
    except SIGTERMException:  # Lightning stopped at a step end; RunCheckpoint saved a checkpoint there
        run.interrupted("SIGTERM")
        exit_code = EXIT_SIGTERM
    except KeyboardInterrupt:
        run.record["status"] = "interrupted"
        raise
    except SystemExit as e:  # Lightning turns Ctrl-C into a graceful stop and sys.exit(1)
        if run.trainer is None and e.code in (130, EXIT_SIGTERM):  # the pre-training run (ensure_pretrained) stopped
            run.interrupted("Ctrl-C" if e.code == 130 else "SIGTERM")
            raise
        if run.trainer is None or not run.trainer.interrupted:
            run.record.update(status="failed", error=f"SystemExit: {e}")
            raise
        run.interrupted("Ctrl-C")
        exit_code = 130
    except BaseException as e:
        run.record.update(status="failed", error=f"{type(e).__name__}: {e}")
        if type(e).__name__ == "InstantiationException" and isinstance(e.__cause__, user_errors()):
            raise e.__cause__ from None  # a user error raised while Hydra built an object: one line, not a traceback
        raise
    finally:
        if run.monitor is not None:
            run.record.update(run.monitor.summary())
        run.record["finished_at"] = _now()
        if run.lock is not None:
            write_json_atomic(run.path, run.record)
            release_lock(run.lock)
        _finish_wandb()
        torch.set_num_threads(threads)
        run_event("end", cfg, run.record)
    if is_rank_zero():  # one summary line, not one per DDP process
        _print_summary(run.record, run.path)
    if exit_code == 130:
        sys.exit(130)  # as a shell reports a process ended by SIGINT; a multirun stops here
    if exit_code == EXIT_SIGTERM:
        if run.preemption is not None:
            run.preemption.requeue()  # under submitit, after its requeue signal: requeue the job and exit
        sys.exit(EXIT_SIGTERM)  # 143, as if SIGTERM had ended the process, so schedulers see a stopped job


def damaged_record(path: Path, previous: dict[str, Any] | None) -> str | None:
    """What is wrong with a run's previous record, if it is damaged: not a JSON record, or `running` while its
    process is gone (killed after its last checkpoint, or before it)."""
    if previous is None and path.exists():
        return f"{path} is damaged (not a JSON record)"
    if previous and previous.get("status") == "running" and effective_status(previous) == "interrupted":
        return f"{path} says running, but its process {previous.get('pid')} is gone"
    return None


def _finish_wandb() -> None:
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def _print_summary(record: dict[str, Any], path: Path) -> None:
    best = record.get("metric_best")
    best_s = "n/a" if best is None else f"{best:.4f}"
    print(
        f"{record['status']}: {record['task']} {record['model']} {record['peft']} seed={record['seed']} | "
        f"{record['metric_name']} best={best_s} | time {record.get('time_total_s', 0):.1f}s | "
        f"trainable {record.get('trainable_params', 0):,} (peft {record.get('peft_params', 0):,}) | record {path}"
    )
