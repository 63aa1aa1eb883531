"""Who owns the signals a cluster sends before it stops a job.

- SIGTERM (SLURM's preemption or time limit, `scancel`, a kill): Lightning stops at the next step,
  `RunCheckpoint` writes a checkpoint there, the record says `interrupted`, the process exits 143
  (128 + SIGTERM). Re-running the command resumes.
- SIGTERM inside a gradient-accumulation window: Lightning would stop after the micro-batch, and the gradients
  accumulated so far are in no checkpoint, so the resumed run would differ. `Preemption` holds the stop until the
  window's last micro-batch has stepped (at most `accumulate_grad_batches - 1` more micro-batches: keep a window
  shorter than the scheduler's grace time, SLURM's KillWait or submitit's `signal_delay_s`).
- Under submitit (`hydra/launcher=slurm` or `local`), submitit alone owns the requeue signal (USR2 by
  default, `--signal` sent before the time limit): its handler would requeue and exit at once, in the middle
  of a step. `Preemption` defers it: the signal only asks Lightning to stop as for SIGTERM; once the checkpoint
  and the record are written, `requeue()` hands the signal to submitit's handler, which requeues the job
  (the same run directory, so it resumes) and exits. Lightning's own SLURM auto-requeue is turned off
  (`cluster_plugins`), so that one signal has one owner.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Any

import lightning as L

log = logging.getLogger("onelora")

EXIT_SIGTERM = 128 + signal.SIGTERM  # 143: what a shell reports for a process ended by SIGTERM


def submitit_signal() -> signal.Signals | None:
    """submitit's requeue signal when this process is a submitit job, else None."""
    try:
        from submitit import JobEnvironment
    except ImportError:
        return None
    try:
        env = JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return None
    return env._usr_sig() if env.activated() else None


def cluster_plugins() -> list[Any]:
    """Under SLURM, Lightning's cluster environment without its auto-requeue: submitit owns the requeue signal."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


class Preemption(L.Callback):
    """Defers submitit's requeue signal to a step boundary, and a stop to the end of the accumulation window
    (module docstring)."""

    def __init__(self) -> None:
        self.signum = submitit_signal()
        self.received: int | None = None
        self._submitit_handler: Any = None
        self._held = False  # a SIGTERM arrived inside an accumulation window: stop once it has stepped

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        connector = trainer._signal_connector  # Lightning raises SIGTERMException after this hook if it is set
        inside = trainer.fit_loop._should_accumulate()  # this micro-batch did not step the optimizer
        if connector.received_sigterm and inside:
            if not self._held:
                log.info("SIGTERM inside a gradient-accumulation window: stopping once it has stepped")
            connector.received_sigterm, self._held = False, True
        elif self._held and not inside:
            connector.received_sigterm, self._held = True, False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.signum is not None and stage == "fit":
            self._submitit_handler = signal.getsignal(self.signum)
            signal.signal(self.signum, self._defer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._submitit_handler is not None:
            signal.signal(self.signum, self._submitit_handler)

    def _defer(self, signum: int, frame: FrameType | None) -> None:
        log.info("requeue signal %s: stopping at the next step to checkpoint, then requeueing", signum)
        self.received = signum
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's graceful stop: it raises SIGTERMException at the step end

    def requeue(self) -> None:
        """After the record is written: submitit's own handler requeues the job and exits the process."""
        handler = self._submitit_handler
        if self.received is None or not callable(handler):
            return
        handler(self.received, None)
