"""The run's checkpoint callback: by epochs or by steps with one override, and a checkpoint at SIGTERM."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger("onelora")


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with four differences.

    - A step interval replaces the per-epoch checkpoint: `callbacks.checkpoint.every_n_train_steps=200` alone
      checkpoints every 200 steps (Lightning refuses every_n_train_steps together with every_n_epochs, which the
      config sets by default). The loader is resumable, so a checkpoint in the middle of an epoch resumes exactly.
    - When SIGTERM stops the run (SLURM's preemption or time limit, `scancel`, submitit's requeue signal) a
      checkpoint is written at the step where Lightning stopped, so the requeued run loses nothing; inside
      validation too, and the requeued run validates again from the first batch (`validation_restarts`). Other
      exceptions (a diverged loss, a bug) save nothing: their state is not worth resuming.
    - No version suffixes: after a resume, `last.ckpt` still names the newest checkpoint.
    - `save_top_k` holds across resumes: Lightning never deletes the checkpoint a run resumed from (Lightning#18687),
      so each preemption would leave one more file (with `peft=full`, a model and its optimizer state each); here
      it goes as any older checkpoint does, once a newer one is on disk.
    """

    def __init__(
        self, every_n_train_steps: int | None = None, every_n_epochs: int | None = None, **kwargs: Any
    ) -> None:
        if every_n_train_steps:
            every_n_epochs = None
        # a resumed run re-links last.ckpt and rewrites a step's file, instead of adding last-v1.ckpt, step-v1...
        # (the checkpoint it resumed from was saved before its own link existed, so Lightning would version)
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(every_n_train_steps=every_n_train_steps, every_n_epochs=every_n_epochs, **kwargs)
        self._in_validation = False  # a SIGTERM checkpoint written inside validation (`validation_restarts`)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        with warnings.catch_warnings():  # a resumed run's folder holds its checkpoints: that is no surprise
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)

    def _should_remove_checkpoint(self, trainer: L.Trainer, previous: str, current: str) -> bool:
        if previous == current:
            return False
        if not _is_local_file_protocol(previous):
            return True
        return Path(str(self.dirpath)).absolute() in Path(previous).absolute().parents  # only this run's own files

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        self._in_validation = trainer.validating
        if not self._in_validation and self._last_global_step_saved == trainer.global_step:
            log.info("SIGTERM: the checkpoint of step %d is already on disk", trainer.global_step)
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)  # as at a step or epoch end: keeps save_top_k's rule
        self._save_last_checkpoint(trainer, candidates)
        self._in_validation = False
        log.info("SIGTERM: checkpoint of step %d written to %s", trainer.global_step, self.best_model_path)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._in_validation:
            validation_restarts(checkpoint)


def validation_restarts(checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint written inside validation resume with that whole validation, from its first batch.

    Training's state is whole there (validation changes none of it), but the validation's metric states are in no
    checkpoint. Lightning resumes a validation it finds half done ("mid-evaluation": one batch started, none
    finished) and would otherwise skip it, its metric never computed; so the validation's batch counters are set
    back to that point: the resumed run validates every batch again, then trains on as the uninterrupted run does.
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    done = dict(progress["current"])  # this validation's batches so far; `total` counts this epoch's validations
    restart = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
    progress["current"] = restart
    progress["total"] = {k: progress["total"][k] - done[k] + restart[k] for k in restart}
    progress["is_last_batch"] = False
