"""Measuring one (experiment, method): compose its config, build it on random weights, feed synthetic batches of
its shapes, run N steps through the task's LightningModule in a Lightning Trainer (see `onelora.costs`)."""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ..report.manifest import ROOT, Manifest
from .meters import PeakRSS, SavedBytes, quiet, state_bytes, step_timer
from .tables import add_ratios, paper_costs

CONFIGS = ROOT / "configs"


class CostsError(ValueError):
    """A costs request that cannot run as given (one clear line)."""


# --- configs ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def composed(experiment: str, method: str, overrides: Sequence[str], workdir: Path) -> Iterator[DictConfig]:
    """The experiment's config for `method`, random weights, everything written under `workdir`."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    paths = [f"paths.{k}={workdir / k}" for k in ("data_dir", "log_dir", "cache_dir", "output_dir")]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        try:
            cfg = compose(
                config_name="config",
                overrides=[f"experiment={experiment}", f"peft={method}", "logger=none", *paths, *overrides],
            )
        except HydraException as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CostsError(f"cannot compose experiment={experiment} peft={method}: {msg}") from None
        from ..run.preflight import check_values

        check_values(cfg)  # --set data.module.batch_size=abc: one line, as from run.py
        random_weights(cfg)
        yield cfg


def random_weights(cfg: DictConfig) -> None:
    """No checkpoint, no download: the model (and a VAE) from its architecture; FID features never loaded."""
    with open_dict(cfg):
        cfg.model.pretrained = None
        if cfg.model.get("vae"):
            cfg.model.vae.pretrained = None
        fid = cfg.task.get("module", {}).get("fid")
        if fid is not None:  # built at setup, unused in training: a small random extractor instead of Inception
            fid.feature = {"_target_": "onelora.tasks.generation.RandomConvFeatures"}


def reduce_layers(cfg: DictConfig, layers: int | None) -> None:
    """Fewer blocks (CPU runs and tests): transformers' num_hidden_layers, diffusers' num_layers, a DPT backbone."""
    if not layers:
        return
    arch = cfg.model.get("arch") or {}
    with open_dict(cfg):
        for key in ("num_hidden_layers", "num_layers"):
            if key in arch:
                arch[key] = layers
        backbone = arch.get("backbone_config")
        if backbone is not None and "num_hidden_layers" in backbone:
            backbone.num_hidden_layers = layers
            n = len(backbone.get("out_indices") or [])
            if n:  # DPT reads n intermediate layers: spread them over the fewer blocks
                backbone.out_indices = [max(1, round((i + 1) * layers / n)) for i in range(n)]


def single_process(cfg: DictConfig, accelerator: str) -> str:
    """One process on `accelerator`, one optimizer step per micro-batch; the strategy kept where it can run.

    Returns the strategy's name as measured (DeepSpeed and FSDP need a GPU; DeepSpeed needs its package).
    """
    import importlib.util

    from .memory import strategy_target

    target = strategy_target(cfg)
    keep = accelerator == "gpu" and (
        ("deepspeed" in target and importlib.util.find_spec("deepspeed") is not None) or "fsdp" in target
    )
    with open_dict(cfg):
        cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.accelerator = 1, 1, accelerator
        cfg.trainer.accumulate_grad_batches = 1
        if cfg.task.get("global_batch_size"):
            cfg.task.global_batch_size = None
        if not keep:
            cfg.trainer.strategy = "auto"
    if "deepspeed" in target:
        return "deepspeed" if keep else "single (deepspeed needs a GPU and its package)"
    if "fsdp" in target:
        return "fsdp" if keep else "single (fsdp needs a GPU)"
    return "single"


# --- synthetic batches ------------------------------------------------------------------------------------------
def synthetic_batch(cfg: DictConfig, generator: torch.Generator) -> tuple[Any, str]:
    """One training batch in the task's format and the experiment's exact shapes; also its shape, in words."""
    kind = cfg.model.get("kind")
    data = cfg.data.get("module") or {}
    b = int(data.get("batch_size", 1) or 1)
    if kind == "causal_lm":
        length, vocab = int(data.get("max_length", 512) or 512), int(cfg.model.arch.vocab_size)
        ids = torch.randint(0, vocab, (b, length), generator=generator)
        labels = ids.clone()
        labels[:, : length // 4] = -100  # the prompt: no loss, as the data's label masking
        mask = torch.ones_like(ids)
        mask[0, -1], labels[0, -1] = 0, -100  # one padded token: batches of the data are padded (an explicit mask)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}, f"{b}x{length} tokens"
    if kind == "image_classifier":
        side, classes = int(cfg.model.get("image_size") or 224), int(cfg.data.get("num_classes", 10))
        images = torch.randn(b, 3, side, side, generator=generator)
        return (images, torch.randint(0, classes, (b,), generator=generator)), f"{b}x3x{side}x{side}"
    if kind == "depth_estimator":
        from .memory import depth_input_hw

        h, w = depth_input_hw(cfg)
        lo, hi = float(cfg.data.get("min_depth", 1e-3)), float(cfg.data.get("max_depth", 10))
        depth = torch.rand(b, h, w, generator=generator) * (hi - lo) * 0.9 + lo + 0.05 * (hi - lo)
        batch = {"image": torch.randn(b, 3, h, w, generator=generator), "depth": depth, "mask": depth > lo}
        return batch, f"{b}x3x{h}x{w}"
    if kind == "diffusion_transformer":
        classes = int(cfg.data.get("num_classes", 10))
        labels = torch.randint(0, classes, (b,), generator=generator)
        if data.get("cache_latents"):
            side = int(cfg.model.arch.sample_size)
            moments = torch.randn(b, 2 * int(cfg.model.arch.in_channels), side, side, generator=generator)
            return {"moments": moments, "label": labels}, f"{b} latents {side}x{side}"
        side = int(cfg.model.get("image_size") or 256)
        images = torch.rand(b, 3, side, side, generator=generator) * 2 - 1
        return {"image": images, "label": labels}, f"{b}x3x{side}x{side}"
    raise CostsError(f"model kind {kind!r} has no synthetic batch; costs know causal_lm, image_classifier, "
                     "depth_estimator and diffusion_transformer")  # fmt: skip


class RepeatBatch(torch.utils.data.Dataset):
    """The same batch `n` times (its values do not matter; building it once keeps the loader out of the timing)."""

    def __init__(self, batch: Any, n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.batch


@dataclass
class Settings:
    steps: int = 5
    warmup: int = 1
    device: str = "auto"  # auto | cpu | cuda
    layers: int | None = None  # fewer blocks (CPU, tests)
    overrides: tuple[str, ...] = ()  # Hydra overrides for every run (e.g. model=vit_tiny data.module.batch_size=2)
    seed: int = 0


def measure(experiment: str, method: str, settings: Settings, on_step: Callable[[], None] = lambda: None) -> dict:
    """Build, train `settings.steps` steps and measure one (experiment, method); see the module doc."""
    import lightning as L
    from hydra.utils import instantiate

    from ..run.build import build_peft_model
    from .memory import estimate_from_config

    device = torch.device(_device(settings.device))
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    gc.collect()  # the previous method's model and optimizer are gone before this one's peak is taken
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with (
        tempfile.TemporaryDirectory(prefix="onelora_costs_") as tmp,
        composed(experiment, method, settings.overrides, Path(tmp)) as cfg,
    ):
        reduce_layers(cfg, settings.layers)
        dryrun_cfg = cfg.copy()  # the experiment as configured: its world size and strategy, traced for CUDA
        strategy = single_process(cfg, accelerator)
        L.seed_everything(settings.seed, verbose=False)
        meta_model, counts = build_peft_model(cfg, meta=True)
        estimate = estimate_from_config(meta_model, cfg, device_type=device.type) or {}
        dry = estimate_from_config(meta_model, dryrun_cfg, device_type="cuda") or {}
        del meta_model
        with torch.device(device) if device.type == "cuda" else contextlib.nullcontext():
            model, counts = build_peft_model(cfg)  # pretrained is null: random weights, built on the device
        task = instantiate(
            cfg.task.module,
            model=model,
            optimizer=instantiate(cfg.task.optimizer),
            scheduler=OmegaConf.to_container(cfg.task.scheduler) if cfg.task.get("scheduler") else None,
        )
        batch, shape = synthetic_batch(cfg, torch.Generator().manual_seed(settings.seed))
        n = settings.steps + settings.warmup
        loader = torch.utils.data.DataLoader(RepeatBatch(batch, n), batch_size=None, shuffle=False)
        timer = step_timer(device, on_step)
        with quiet():
            trainer = L.Trainer(
                accelerator=accelerator, devices=1, precision=cfg.trainer.get("precision", "32-true"),
                strategy=instantiate(cfg.trainer.strategy) if not isinstance(cfg.trainer.strategy, str)
                else cfg.trainer.strategy,
                max_steps=n, limit_train_batches=n, limit_val_batches=0, num_sanity_val_steps=0, max_epochs=1,
                gradient_clip_val=cfg.trainer.get("gradient_clip_val"), accumulate_grad_batches=1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                default_root_dir=tmp,
            )  # fmt: skip
        if device.type == "cuda":  # the fp32 initialisation's blocks are not part of the run's memory
            torch.cuda.empty_cache()
        with quiet(), SavedBytes(model) as saved, PeakRSS() as rss:
            trainer.fit(task, train_dataloaders=loader)
        peak_alloc = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        peak_reserved = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None
        state = state_bytes(task)
        row = {
            "experiment": experiment, "method": method, "device": device_name(device),
            "precision": str(cfg.trainer.get("precision")), "strategy": strategy, "steps": settings.steps,
            "batch_size": int(cfg.data.module.get("batch_size", 1)), "input_shape": shape,
            "trainable_params": counts.trainable, "peft_params": counts.peft, "total_params": counts.total,
            "step_ms": 1e3 * statistics.median(timer.times[settings.warmup:] or timer.times),
            "saved_bytes": saved.nbytes, "peak_allocated_bytes": peak_alloc, "peak_reserved_bytes": peak_reserved,
            "peak_rss_bytes": rss.peak if device.type == "cpu" else None, "state_bytes": state,
            "measured_bytes": peak_alloc if peak_alloc is not None else state + saved.nbytes,
            "est_activations_bytes": estimate.get("activations"), "est_total_bytes": estimate.get("total"),
            "dryrun_total_bytes": dry.get("total"),
        }  # fmt: skip
        del task, model, trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return row


def _device(spec: str) -> str:
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise CostsError("--device cuda asked, but torch sees no GPU; use --device cpu (reduced configurations)")
    if spec not in ("cpu", "cuda"):
        raise CostsError(f"--device must be auto, cpu or cuda, got {spec!r}")
    return spec


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def run_costs(
    manifest: Manifest, settings: Settings, methods: Sequence[str] | None = None, progress: bool | None = None
) -> list[dict[str, Any]]:
    """Every (group, method) of the manifest, measured; one progress bar over methods and steps."""
    from tqdm import tqdm

    methods = list(methods or manifest.methods)
    unknown = [m for m in methods if not (CONFIGS / "peft" / f"{m}.yaml").is_file()]
    if unknown:
        raise CostsError(f"unknown method(s) {', '.join(unknown)}; see configs/peft/")
    paper = paper_costs(manifest)
    rows: list[dict[str, Any]] = []
    total = len(manifest.groups) * len(methods) * (settings.steps + settings.warmup)
    with tqdm(total=total, unit="step", disable=None if progress is None else not progress, leave=False) as bar:
        for group in manifest.groups:
            for method in methods:
                bar.set_description(f"{group.experiment} {method}")
                row = measure(group.experiment, method, settings, on_step=lambda: bar.update(1))
                row["transfer"] = group.transfer
                row.update(paper.get((group.transfer, method), {}))
                est, saved = row.get("est_activations_bytes"), row["saved_bytes"]
                row["est_error"] = est / saved - 1 if est is not None and saved else None
                rows.append(row)
    add_ratios(rows)
    return rows
