"""What a cost run measures besides the step time: the process's peak RSS, the bytes autograd saves in the
model's forward, the state (parameters, gradients, optimizer tensors); a per-step timer; quiet Lightning."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn


class PeakRSS:
    """The process's resident set size, sampled every few milliseconds in a thread (Linux /proc)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


class SavedBytes:
    """Storages autograd saves inside `model`'s forward (first call), parameters and buffers excluded."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.nbytes, self.calls = model, 0, 0
        self._hooks: Any = None
        self._seen: set[int] = set()
        self._keep: list[Tensor] = []

    def _pack(self, t: Tensor) -> Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in self._exclude and st.data_ptr() not in self._seen:
            self._seen.add(st.data_ptr())
            self._keep.append(t)
            self.nbytes += st.nbytes()
        return t

    def _pre(self, *args: Any, **kwargs: Any) -> None:
        if self.calls == 0 and torch.is_grad_enabled():
            self._exclude = {t.untyped_storage().data_ptr() for t in [*self.model.parameters(), *self.model.buffers()]}
            self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
            self._hooks.__enter__()

    def _post(self, *args: Any, **kwargs: Any) -> None:
        if self._hooks is not None:
            self._hooks.__exit__(None, None, None)
            self._hooks = None
            self.calls += 1
            self._keep = []  # the storages stay alive through backward anyway; keys were taken while alive

    def __enter__(self) -> SavedBytes:
        self._handles = [self.model.register_forward_pre_hook(self._pre), self.model.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()


def step_timer(device: torch.device, on_step: Callable[[], None]) -> Any:
    import lightning as L

    class StepTimer(L.Callback):
        """Wall-clock of each training step (synchronised on GPU); peak memory from the first step on."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def _sync(self) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self._sync()
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self._sync()
            self.times.append(time.perf_counter() - self._t0)
            on_step()

    return StepTimer()


def state_bytes(task: Any) -> int:
    """Parameters and buffers of the task's modules (the model, a VAE; not the FID extractor, replaced here by a
    small one), gradients and optimizer tensors."""
    fid = getattr(task, "fid", None)
    skip = {id(t) for t in [*fid.parameters(), *fid.buffers()]} if isinstance(fid, nn.Module) else set()
    tensors = {id(t): t for t in [*task.parameters(), *task.buffers()] if id(t) not in skip}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    total += sum(p.numel() * p.element_size() for p in task.model.parameters() if p.requires_grad)  # gradients
    for opt in task.trainer.optimizers if task.trainer is not None else []:
        for state in opt.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, Tensor))
    return total


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Lightning's start-up lines and loader advice stay off the screen (the table is the output)."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"lightning\..*")
            warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers).*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
