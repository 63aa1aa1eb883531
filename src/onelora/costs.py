"""The paper's cost columns, measured: each method of a table trained for a few steps on random weights.

Time, memory and parameter counts do not depend on the values of the weights or of the data. For every method of
an experiment manifest (`experiments/<name>.yaml`) this composes the experiment's Hydra config, builds its real
architecture with random weights (`model.pretrained=null`, no download), feeds synthetic batches of exactly the
experiment's shapes (micro-batch, sequence length, the data set's input size from the data code itself) and runs
N optimizer steps through the task's own LightningModule in a Lightning Trainer (its `training_step`, optimizer,
schedule and gradient clipping; the experiment's precision, strategy and checkpointing). Measured per method:

- `step_ms`: median wall-clock of a training step (forward, backward, clipping, optimizer), the first `warmup`
  steps excluded; one step is one micro-batch (no accumulation);
- `saved_bytes`: the storages autograd saves during the model's forward in the real step, each counted once,
  parameters and buffers excluded (what the dry run traces; with activation checkpointing only what is saved
  outside the checkpointed blocks);
- GPU: `peak_allocated_bytes`, `peak_reserved_bytes` over the steps (`torch.cuda.max_memory_*`);
- CPU: `peak_rss_bytes` (the process, sampled), and `state_bytes` (parameters, buffers, gradients and the
  optimizer's tensors as they are after the steps); `measured_bytes` = state + saved (the GPU: peak allocated).

Beside them: the dry run's estimate of the same setting (`est_*`, traced for the measuring device) and of the
experiment as configured (`dryrun_total_bytes`: its world size and strategy, for CUDA), and the paper's time and
memory columns (`results/paper/`), all as ratios to 1LoRA (or BitFit) in the same run.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import logging
import math
import os
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from .report.manifest import PAPER_DIR, ROOT, Manifest

CONFIGS = ROOT / "configs"
COLUMNS = [
    "experiment", "transfer", "method", "device", "precision", "strategy", "steps", "batch_size", "input_shape",
    "trainable_params", "peft_params", "total_params", "step_ms", "saved_bytes", "peak_allocated_bytes",
    "peak_reserved_bytes", "peak_rss_bytes", "state_bytes", "measured_bytes", "est_activations_bytes",
    "est_total_bytes", "est_error", "dryrun_total_bytes", "paper_time", "paper_time_unit", "paper_memory_pct",
    "reference", "step_ratio", "memory_ratio", "est_ratio", "paper_time_ratio", "paper_memory_ratio",
]  # fmt: skip


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


# --- measuring -------------------------------------------------------------------------------------------------
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


def _step_timer(device: torch.device, on_step: Callable[[], None]) -> Any:
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


def _state_bytes(task: Any) -> int:
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

    from .memory import estimate_from_config
    from .train import build_peft_model

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
        timer = _step_timer(device, on_step)
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
        state = _state_bytes(task)
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


# --- the paper's columns, ratios ------------------------------------------------------------------------------------
def paper_costs(manifest: Manifest) -> dict[tuple[str, str], dict[str, Any]]:
    """(transfer, method) -> the paper's time, unit and memory %, from the manifest's table, else any other
    table printing the same runs with cost columns (Table 2's runs: Tables S2/S3)."""
    import pandas as pd

    tables = sorted(PAPER_DIR.glob("table*.csv"))
    if manifest.paper_table:
        tables.sort(key=lambda p: p.stem != manifest.paper_table)
    tables.sort(key=lambda p: p.stem == "tableS1")  # time only, and runs of its own: the last resort
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in tables:
        df = pd.read_csv(path, dtype=str)
        if not {"transfer", "method", "time", "memory_pct"} <= set(df.columns):
            continue
        for _, r in df.iterrows():
            row = out.setdefault((str(r["transfer"]), str(r["method"])), {})
            if row.get("paper_time") is None and not pd.isna(r["time"]):  # each column from the first table having it
                row["paper_time"], row["paper_time_unit"] = float(r["time"]), r.get("time_unit")
            if row.get("paper_memory_pct") is None and not pd.isna(r["memory_pct"]):
                row["paper_memory_pct"] = float(r["memory_pct"])
    return out


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Ratios to the reference method of the same experiment (1LoRA, else BitFit), measured in the same run."""
    for exp in dict.fromkeys(r["experiment"] for r in rows):
        group = [r for r in rows if r["experiment"] == exp]
        ref = next((r for m in ("onelora", "bitfit") for r in group if r["method"] == m), None)
        for r in group:
            r["reference"] = ref["method"] if ref else None
            for out, key in (("step_ratio", "step_ms"), ("memory_ratio", "measured_bytes"),
                             ("est_ratio", "est_total_bytes"), ("paper_time_ratio", "paper_time"),
                             ("paper_memory_ratio", "paper_memory_pct")):  # fmt: skip
                a, b = r.get(key), ref.get(key) if ref else None
                r[out] = a / b if a is not None and b else None


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


# --- output --------------------------------------------------------------------------------------------------------------
def _fmt(x: Any, kind: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if kind == "gib":
        return f"{x / 2**30:.2f}" if x >= 2**27 else f"{x / 2**20:.1f} MiB" if x >= 2**20 else f"{x / 2**10:.1f} KiB"
    if kind == "ratio":
        return f"{x:.3f}"
    if kind == "pct":
        return f"{100 * x:+.1f}%"
    return str(x)


def markdown(rows: list[dict[str, Any]], title: str, note: str = "") -> str:
    gpu = any(r.get("peak_allocated_bytes") for r in rows)
    mem = "peak alloc. [GiB]" if gpu else "state + saved [GiB]"
    head = (f"| transfer | method | step [ms] | ×ref | paper time ×ref | saved act. [GiB] | est. (error) | {mem} | "
            "×ref | est. total ×ref | paper memory ×ref | dry run (as configured) [GiB] |")  # fmt: skip
    lines = [f"# {title}", "", note, "", head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['transfer']} | {r['method']} | {r['step_ms']:.1f} | {_fmt(r['step_ratio'], 'ratio')} | "
            f"{_fmt(r.get('paper_time_ratio'), 'ratio')} | {_fmt(r['saved_bytes'], 'gib')} | "
            f"{_fmt(r.get('est_activations_bytes'), 'gib')} ({_fmt(r.get('est_error'), 'pct')}) | "
            f"{_fmt(r['measured_bytes'], 'gib')} | {_fmt(r['memory_ratio'], 'ratio')} | "
            f"{_fmt(r.get('est_ratio'), 'ratio')} | {_fmt(r.get('paper_memory_ratio'), 'ratio')} | "
            f"{_fmt(r.get('dryrun_total_bytes'), 'gib')} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict[str, Any]], out_dir: Path, name: str, title: str, note: str) -> list[Path]:
    """`<name>.csv`, `<name>.md` and `<name>.png` (paper ratio against measured ratio), written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.csv", out_dir / f"{name}.md", out_dir / f"{name}.png"]
    tmp = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in paths]
    with open(tmp[0], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp[1].write_text(markdown(rows, title, note))
    plot_ratios(rows, tmp[2], title)
    for t, p in zip(tmp, paths):
        os.replace(t, p)
    return paths


def plot_ratios(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Two panels (time, memory): the paper's ratio to the reference against ours, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report.plots import method_color, method_label

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, (paper, ours, what) in zip(axes, (("paper_time_ratio", "step_ratio", "step time"),
                                              ("paper_memory_ratio", "memory_ratio", "memory"))):  # fmt: skip
        pts = [(r[paper], r[ours], r) for r in rows if r.get(paper) is not None and r.get(ours) is not None]
        for x, y, r in pts:
            ax.scatter(x, y, color=method_color(r["method"]), s=40, zorder=3)
            ax.annotate(method_label(r["method"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        values = [v for x, y, _ in pts for v in (x, y)] or [1.0]
        lo, hi = min(values + [1.0]) * 0.95, max(values + [1.0]) * 1.05
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1, ls="--", zorder=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"paper: {what} / reference")
        ax.set_ylabel(f"measured: {what} / reference")
        ax.grid(alpha=0.3)
        if not pts:
            ax.text(0.5, 0.5, "no paper column", ha="center", transform=ax.transAxes, color="0.4")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
