"""Efficiency accounting (wall-clock, peak memory) as the paper reports it."""

from __future__ import annotations

import logging
import resource
import sys
import time
from typing import Any

import lightning as L
import torch


def process_peak_rss_bytes() -> int:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class EfficiencyMonitor(L.Callback):
    """Wall-clock of training and of validation, peak accelerator memory since fit start.

    Time spent in validation is measured separately and excluded from training time;
    the paper's "time" is their sum. Peak memory is `max_memory_allocated` (reset at fit
    start) and also `max_memory_reserved` (what the allocator held); None on CPU.
    Elapsed times survive a resume: a checkpoint saved mid-epoch holds the epoch's training time so far, and the
    resumed run goes on counting from its start (Lightning calls no `on_train_epoch_start` for an epoch it resumes).
    """

    def __init__(self) -> None:
        self.train_s = 0.0
        self.val_s = 0.0
        self._t0: float | None = None
        self._v0: float | None = None
        self.peak_mem_bytes: int | None = None
        self.peak_reserved_bytes: int | None = None
        self.device_total_bytes: int | None = None
        self.device_name = "cpu"

    def _cuda(self, trainer: L.Trainer) -> torch.device | None:
        dev = trainer.strategy.root_device
        return dev if dev.type == "cuda" else None

    def _sync(self, trainer: L.Trainer) -> None:
        if (dev := self._cuda(trainer)) is not None:
            torch.cuda.synchronize(dev)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (dev := self._cuda(trainer)) is not None:
            torch.cuda.reset_peak_memory_stats(dev)
            props = torch.cuda.get_device_properties(dev)
            self.device_total_bytes, self.device_name = int(props.total_memory), props.name
        else:
            self.device_name = trainer.strategy.root_device.type

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(trainer)
        self._t0 = time.perf_counter()  # an epoch resumed mid-way gets no on_train_epoch_start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(trainer)
        self._t0 = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(trainer)
        self._v0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(trainer)
        if self._v0 is not None:
            self.val_s += time.perf_counter() - self._v0
            if self._t0 is not None:  # validation inside a training epoch is not training time
                self._t0 += time.perf_counter() - self._v0
            self._v0 = None
        self._read_peak(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(trainer)
        if self._t0 is not None:
            self.train_s += time.perf_counter() - self._t0
            self._t0 = None
        self._read_peak(trainer)
        pl_module.log_dict({"time/train_s": self.train_s, "time/val_s": self.val_s}, rank_zero_only=True)
        if self.peak_mem_bytes is not None:
            pl_module.log("memory/peak_bytes", float(self.peak_mem_bytes), rank_zero_only=True)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._t0 is not None:
            self.train_s += time.perf_counter() - self._t0
            self._t0 = None

    def _read_peak(self, trainer: L.Trainer) -> None:
        if (dev := self._cuda(trainer)) is None:
            return
        peak = torch.tensor([torch.cuda.max_memory_allocated(dev), torch.cuda.max_memory_reserved(dev)], device=dev)
        peak = trainer.strategy.reduce(peak, reduce_op="max")  # the worst rank is what must fit
        self.peak_mem_bytes, self.peak_reserved_bytes = int(peak[0]), int(peak[1])

    def summary(self) -> dict[str, Any]:
        frac = None
        if self.peak_mem_bytes is not None and self.device_total_bytes:
            frac = self.peak_mem_bytes / self.device_total_bytes
        return {
            "time_train_s": self.train_s,
            "time_val_s": self.val_s,
            "time_total_s": self.train_s + self.val_s,
            "peak_mem_bytes": self.peak_mem_bytes,
            "peak_mem_reserved_bytes": self.peak_reserved_bytes,
            "peak_mem_frac": frac,
            "device_total_mem_bytes": self.device_total_bytes,
            "device": self.device_name,
            "peak_rss_bytes": process_peak_rss_bytes(),
        }

    def state_dict(self) -> dict[str, Any]:
        running = time.perf_counter() - self._t0 if self._t0 is not None else 0.0  # a checkpoint inside an epoch
        return {"train_s": self.train_s + running, "val_s": self.val_s}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_s, self.val_s = state_dict.get("train_s", 0.0), state_dict.get("val_s", 0.0)


class EpochReport(L.Callback):
    """One line per validation epoch in the run's log (`epoch 3/10: accuracy 0.8123, best 0.8304`), and the same
    as a progress event for a sweep's bar (`onelora.run.progress`). Rank 0 only."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the task's on_validation_epoch_end (callbacks' epoch-end hooks run before the module's)
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        from ..progress import emit

        name = getattr(pl_module, "metric_name", "loss")
        if getattr(pl_module, "in_final_eval", False):  # the pass after training (MDE's flip-averaged one)
            value = trainer.callback_metrics.get(f"{pl_module.final_eval}/{name}")
            logging.getLogger("onelora.epochs").info(
                "%s (final weights): %s %s", pl_module.final_eval, name, "n/a" if value is None else f"{value:.4f}"
            )
            return
        value = trainer.callback_metrics.get(f"val/{name}")
        value = None if value is None else float(value)
        best = getattr(pl_module, "best", None)
        epoch, epochs = trainer.current_epoch + 1, trainer.max_epochs
        logging.getLogger("onelora.epochs").info(
            "epoch %d/%s: %s %s, best %s", epoch, epochs if epochs and epochs > 0 else "?", name,
            "n/a" if value is None else f"{value:.4f}", "n/a" if best is None else f"{best:.4f}",
        )  # fmt: skip
        emit("epoch", epoch=epoch, epochs=epochs, metric=name, value=value, best=best)
