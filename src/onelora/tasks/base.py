"""`PeftTask`: the one LightningModule the four tasks share.

A task subclass adds its loss (`training_loss`), its validation update (`validation_update`)
and its metric (`compute_metrics`); this base owns the optimiser and schedule (from the
config), divergence detection, best-so-far tracking of the task metric, adapter-only
checkpoints, and the RNG state that makes a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
import torchmetrics
from torch import Tensor, nn
from torch.utils.data import DistributedSampler


class DivergedError(RuntimeError):
    """Training produced a non-finite loss."""


class PeftTask(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: dict[str, Any] | None = None,
        metric_name: str = "loss",
        metric_direction: str = "min",
        lr_groups: dict[str, float] | None = None,
        head_lr: float | None = None,
        head_modules: list[str] | None = None,
    ) -> None:
        super().__init__()
        if metric_direction not in ("min", "max"):
            raise ValueError(f"metric_direction must be min or max, got {metric_direction!r}")
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler) if scheduler else None
        self.metric_name, self.metric_direction = metric_name, metric_direction
        self.lr_groups = {str(k): float(v) for k, v in (lr_groups or {}).items()}  # module prefix -> lr factor
        # a new head's own lr (absolute, whatever the method's lr): a head trained at an adapter's small lr
        # barely moves, and an adapter at a head's lr can diverge (README "Real weights")
        self.head_lr = None if head_lr is None else float(head_lr)
        self.head_modules = list(head_modules or [])
        self.best: float | None = None
        self.final_metrics: dict[str, float] = {}
        self.in_final_eval = False  # the pass after training (`final_eval`): its metrics are kept apart
        self.final_eval_metrics: dict[str, float] = {}
        # checkpoints hold only what trains: frozen weights come from the pretrained source
        self.strict_loading = False
        # the validation loss as sums over all processes (`validation_step`); a batch's real samples (`kept`)
        self.val_loss_sum, self.val_loss_count = torchmetrics.SumMetric(), torchmetrics.SumMetric()
        self._keep: Tensor | None = None

    # --- what a task provides -------------------------------------------------------------
    def training_loss(self, batch: Any) -> Tensor:
        raise NotImplementedError

    def validation_update(self, batch: Any) -> Tensor | None:
        """Update the task's metric state with one batch; may return a loss to log."""
        raise NotImplementedError

    def compute_metrics(self) -> dict[str, float]:
        """The epoch's metrics (must include `metric_name`); resets the metric state."""
        raise NotImplementedError

    @property
    def final_eval(self) -> str | None:
        """The name of an evaluation pass after training, with its own protocol (MDE's flip-averaged one), under
        which `result.json` and the logs keep its metrics; None: no such pass. `start_final_eval` switches to it."""
        return None

    def start_final_eval(self) -> None:
        self.in_final_eval = True

    # --- shared loop pieces ---------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.training_loss(batch)
        if not torch.isfinite(loss.detach()):
            raise DivergedError(f"loss is {loss.item()} at step {self.global_step}; lower the learning rate")
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=_batch_size(batch))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        n = _batch_size(batch)
        self._keep = self._repeated_samples_mask(batch_idx, n)
        loss = self.validation_update(batch)  # the forward runs on every sample: sharded models all-gather in it
        kept = n if self._keep is None else int(self._keep.sum())
        if loss is not None and kept:  # the mean over the batch's kept samples, weighted by their number
            self.val_loss_sum.update(loss.detach().float() * kept)
            self.val_loss_count.update(float(kept))

    def kept(self, x: Tensor) -> Tensor:
        """`x` (one row per sample of the validation batch) without the samples that fill the last processes.

        Under DDP, Lightning's DistributedSampler repeats the first samples so every process gets as many batches;
        counted, they would weigh twice in every metric. Their forward still runs (a sharded model all-gathers its
        weights in it, so every process must take part), but the metrics see each sample once.
        """
        return x if self._keep is None else x[self._keep.to(x.device)]

    def _repeated_samples_mask(self, batch_idx: int, n: int | None) -> Tensor | None:
        """True for the batch's real samples, False for a DistributedSampler's repeats; None when there are none."""
        loader = self.trainer.val_dataloaders if self._trainer is not None else None
        sampler = getattr(loader, "sampler", None)
        if n is None or not isinstance(sampler, DistributedSampler) or sampler.drop_last or sampler.num_replicas == 1:
            return None
        # the sampler's list is the data set's indices then the repeats; this process takes every num_replicas-th
        start = batch_idx * int(loader.batch_size)
        position = sampler.rank + sampler.num_replicas * torch.arange(start, start + n)
        keep = position < len(sampler.dataset)
        return None if bool(keep.all()) else keep

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.compute_metrics()
            self._val_loss()
            return
        metrics = {k: float(v) for k, v in self.compute_metrics().items()}
        if self.in_final_eval:  # neither the best-so-far nor the last validation: the training's numbers stay
            self.final_eval_metrics = metrics
            for k, v in metrics.items():
                self.log(f"{self.final_eval}/{k}", v, sync_dist=False)
            return
        value = metrics[self.metric_name]
        if math.isfinite(value) and (self.best is None or self._better(value, self.best)):
            self.best = value
        for k, v in metrics.items():
            self.log(f"val/{k}", v, sync_dist=False)
        if self.best is not None:
            self.log(f"val/{self.metric_name}_best", self.best, prog_bar=True)
        loss = self._val_loss()
        if loss is not None:
            self.log("val/loss", loss, sync_dist=False)
        self.final_metrics = {**metrics, **({"loss": loss} if loss is not None else {})}

    def _val_loss(self) -> float | None:
        """The validation loss, sample-weighted over all processes (each sample once); None if no task returned one."""
        with warnings.catch_warnings():  # a task without a loss never updates them: no news
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method")
            total, count = float(self.val_loss_sum.compute()), float(self.val_loss_count.compute())
        self.val_loss_sum.reset()
        self.val_loss_count.reset()
        return total / count if count else None

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.metric_direction == "min" else a > b

    def lr_factor(self, name: str) -> float:
        """The learning-rate factor of a parameter: the longest matching module prefix in `lr_groups`, else 1."""
        best, factor = -1, 1.0
        for prefix, f in self.lr_groups.items():
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, factor = len(prefix), f
        return factor

    def is_head(self, name: str) -> bool:
        """A parameter of the task's new head, when the head has its own lr (`head_lr`)."""
        if self.head_lr is None:
            return False
        return any(name.startswith(h + ".") or f".{h}." in f".{name}" for h in self.head_modules)

    def configure_model(self) -> None:
        # a sharding strategy (trainer=fsdp2) shards the network here, once its processes are up
        shard = getattr(self.trainer.strategy, "shard", None) if self._trainer is not None else None
        if shard is not None:
            shard(self.model)

    def configure_optimizers(self) -> Any:
        by_lr: dict[tuple[bool, float], list[nn.Parameter]] = {}  # (absolute?, lr or factor) -> parameters
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                key = (True, self.head_lr) if self.is_head(name) else (False, self.lr_factor(name))
                by_lr.setdefault(key, []).append(p)  # type: ignore[arg-type]
        if not by_lr:
            raise ValueError("the method leaves no parameter to train")
        keys = sorted(by_lr, key=lambda k: (k[0], -k[1]))
        optimizer = self.optimizer_factory([{"params": by_lr[k]} for k in keys])
        for group, (absolute, value) in zip(optimizer.param_groups, keys):
            group["lr"] = value if absolute else group["lr"] * value
        if not self.scheduler_cfg:
            return optimizer
        sched = build_scheduler(optimizer, self.scheduler_cfg, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_start(self) -> None:
        reapply_loader_position(self.trainer)

    # --- checkpoints: trainable tensors, best-so-far and RNG state only ---------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        buffers = {f"model.{n}" for n, _ in self.model.named_buffers()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable | buffers}
        # the last validation's metrics too: a run whose record was lost after its last checkpoint gets them back
        checkpoint["onelora"] = {"best": self.best, "metrics": dict(self.final_metrics), "rng": rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("onelora", {})
        self.best = state.get("best")
        self.final_metrics = dict(state.get("metrics") or {})
        if "rng" in state:
            set_rng_state(state["rng"])


def reapply_loader_position(trainer: L.Trainer) -> None:
    """Resume the training loader where the checkpoint left it, even if it was set up before the restore.

    `trainer.estimated_stepping_batches` (the schedulers' length, in `configure_optimizers`) sets up the train
    loader before Lightning restores the checkpoint's loops; the loader's saved position then waits unused and the
    epoch starts again from its first batch (Lightning#20550). Set the loader up again now that the position is
    known: the same batches as an uninterrupted run.
    """
    loop = trainer.fit_loop
    if not (loop.restarting and loop._combined_loader_states_to_load and loop._combined_loader is not None):
        return
    if loop._data_fetcher is not None:  # it already drew (prefetched) the epoch's first batch
        loop._data_fetcher.teardown()
    loop._combined_loader = None
    loop.setup_data()  # requests the loader again and applies the pending position before iterating


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict[str, Any], total_steps: int) -> Any:
    """`{name: onecycle, ...OneCycleLR options}` (ZoeDepth's), or any `transformers.get_scheduler` name with
    `warmup_ratio` (cosine with 3% warmup for MetaMath); stepped every optimiser step."""
    opts = {k: v for k, v in cfg.items() if k != "name"}
    if cfg["name"] == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 1), **opts)
    from transformers import get_scheduler

    warmup = int(math.ceil(opts.pop("warmup_ratio", 0.0) * total_steps))
    return get_scheduler(cfg["name"], optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def rng_state() -> dict[str, Any]:
    """torch, CUDA, numpy and python RNG states in types `torch.load(weights_only=True)` accepts."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def _batch_size(batch: Any) -> int | None:
    for _ in range(2):  # a dict, a tuple, or a tuple whose first item is a dict (text: ({ids, mask}, labels))
        if isinstance(batch, dict):
            batch = next(iter(batch.values()))
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
    return int(batch.shape[0]) if isinstance(batch, Tensor) else None
