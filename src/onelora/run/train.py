"""`train(cfg)`: in the run's context (`lifecycle`: the lock, the record and its status on every exit), prepare,
build, fit and export.

Everything comes from the composed Hydra config (see configs/). The run directory is
deterministic, so re-running a command resumes from `checkpoints/last.ckpt`, and a run
whose record says `ok` is skipped (resubmitting a sweep only runs what is missing).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import ConfigError
from ..models import looks_local
from ..peft import merge_peft
from .build import build_peft_model, peft_kwargs, peft_method
from .lifecycle import Run, damaged_record, is_rank_zero, run_context
from .progress import run_event
from .record import RECORD, read_record

log = logging.getLogger("onelora")


# --- building -------------------------------------------------------------------------------
def check_fit(cfg: DictConfig) -> None:
    kinds = list(cfg.task.get("model_kinds") or [])
    if kinds and cfg.model.get("kind") not in kinds:
        raise ConfigError(
            f"model {cfg.model.name} ({cfg.model.get('kind')}) does not fit task {cfg.task.name}, "
            f"which needs a model of kind {', '.join(kinds)}; choose another model= or task="
        )


# --- the run --------------------------------------------------------------------------------
def check_config(cfg: DictConfig) -> None:
    """The checks before anything is built: a value of the wrong type for a common key, a bad method option."""
    from ..peft import validate_peft
    from .preflight import check_values

    check_values(cfg)  # a value of the wrong type for a common key: one line, before anything is built
    validate_peft(peft_method(cfg), **peft_kwargs(cfg))  # a bad method option: one line, before any weight loads


def train(cfg: DictConfig) -> tuple[dict[str, Any], Any]:
    """Train and validate as `cfg` says; returns the run record (also written to result.json) and the trained
    LightningModule (None if skipped)."""
    from .batching import apply_global_batch

    check_fit(cfg)
    apply_global_batch(cfg)  # the global batch is reached by accumulation, computed from micro batch and devices
    path = Path(cfg.paths.output_dir) / RECORD
    previous = read_record(path)
    if previous and previous.get("status") == "ok" and not cfg.rerun:
        best = previous.get("metric_best")
        best_s = f"{best:.4f}" if isinstance(best, int | float) else "n/a"  # as the summary line prints it
        print(f"already done: {path} ({previous.get('metric_name')}={best_s}); rerun=true to redo")
        run_event("skip", cfg, previous)
        return previous, None
    if (said := damaged_record(path, previous)) is not None:
        log.warning("%s; the run resumes from its last checkpoint, which keeps its metrics", said)
    with run_context(cfg, previous) as run:  # the lock, the record and its status on every kind of exit
        prepare(cfg, run)
        model, datamodule = build(cfg, run)
        fit(cfg, run, datamodule)
        export(cfg, run, model)
    return run.record, run.task


def prepare(cfg: DictConfig, run: Run) -> None:
    """What comes before any weight loads: the data set's files, a fresh start on rerun, the source model, threads."""
    from ..data.synthetic import ensure_synthetic
    from .checkpoints import set_aside_checkpoints
    from .preflight import preflight

    ensure_synthetic(cfg.data)  # a smoke experiment's tiny data set is built on first use
    preflight(cfg)  # cheap checks (the data set's files) before any weight is loaded
    if cfg.rerun and is_rank_zero():  # starts afresh whatever the status; old checkpoints kept aside, not deleted
        set_aside_checkpoints(Path(cfg.paths.output_dir) / "checkpoints")
    ensure_pretrained(cfg)
    if cfg.get("cpu_threads"):  # after the pre-training above, which runs on its own pinned count
        torch.set_num_threads(int(cfg.cpu_threads))
    run.record["cpu_threads"] = torch.get_num_threads()  # the last bits of a CPU run depend on it
    run_event("start", cfg)
    if run.lock is not None:  # the resolved config, for tools that rebuild the run's model (scripts/math_answers.py)
        OmegaConf.save(cfg, Path(cfg.paths.output_dir) / "config.yaml", resolve=True)


def build(cfg: DictConfig, run: Run) -> tuple[torch.nn.Module, Any]:
    """The model with its method, the data, the task and the Trainer (kept on `run`); returns (model, datamodule)."""
    import lightning as L
    from hydra.utils import instantiate

    from .callbacks import EfficiencyMonitor
    from .callbacks.preemption import Preemption, cluster_plugins

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model, counts = build_peft_model(cfg)
    run.record.update(
        peft_params=counts.peft,
        head_params=counts.head,
        trainable_params=counts.trainable,
        total_params=counts.total,
        adapted_layers=counts.adapted_layers,
        params_by_group=counts.groups,
    )
    datamodule = instantiate(cfg.data.module)
    run.task = instantiate(
        cfg.task.module,
        model=model,
        optimizer=instantiate(cfg.task.optimizer),
        scheduler=OmegaConf.to_container(cfg.task.scheduler) if cfg.task.get("scheduler") else None,
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    run.monitor = next((c for c in callbacks if isinstance(c, EfficiencyMonitor)), None)
    run.preemption = Preemption()  # SIGTERM and submitit's requeue signal: checkpoint, record, exit or requeue
    plugins = cluster_plugins()  # under SLURM: Lightning's auto-requeue off, submitit owns the signal
    run.trainer = instantiate_trainer(cfg, [*callbacks, run.preemption], loggers, plugins)
    for lg in loggers:
        lg.log_hyperparams(
            {"peft_params": counts.peft, "trainable_params": counts.trainable, "total_params": counts.total}
        )
    return model, datamodule


def fit(cfg: DictConfig, run: Run, datamodule: Any) -> None:
    """Fit (resuming from the newest complete checkpoint), validate, and record the metrics and the status."""
    from .checkpoints import resume_checkpoint, trained_keys

    task, trainer, record = run.task, run.trainer, run.record
    # the newest checkpoint that loads and holds every trained tensor (not only last.ckpt's target)
    out = Path(cfg.paths.output_dir)
    ckpt_dir = Path((cfg.get("callbacks") or {}).get("checkpoint", {}).get("dirpath") or out / "checkpoints")
    resume = resume_checkpoint(ckpt_dir, trained_keys(task), set(task.state_dict()), set_aside=is_rank_zero())
    if resume is not None:
        log.info("resuming from %s", resume)
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    if trainer.interrupted:
        record["status"] = "interrupted"
    else:
        record["status"] = "ok"
        if not task.final_metrics:  # resumed from the last checkpoint, and it predates saving the metrics
            trainer.validate(task, datamodule=datamodule, verbose=False)
    record["metric_best"] = task.best
    record["metrics"] = task.final_metrics
    if record["status"] == "ok" and task.final_eval:  # e.g. MDE's flip-averaged pass, not in the time columns
        if run.monitor is not None:
            record.update(run.monitor.summary())
            run.monitor = None
        task.start_final_eval()
        trainer.validate(task, datamodule=datamodule, verbose=False)
        record[task.final_eval] = task.final_eval_metrics


def export(cfg: DictConfig, run: Run, model: torch.nn.Module) -> None:
    """After an ok run with `export_to=`: the merged model, `from_pretrained`-loadable (how source models are made)."""
    if run.record["status"] != "ok" or not cfg.get("export_to"):
        return
    full = unsharded(model, cfg)  # every process takes part in gathering a sharded (FSDP2) model
    if is_rank_zero():
        export_model(full, cfg.export_to)
        run.record["exported_to"] = str(cfg.export_to)


def instantiate_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any], plugins: list[Any]) -> Any:
    """The Lightning Trainer of `cfg.trainer`; a value Lightning refuses (precision, accelerator, ...) is one line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    extra: dict[str, Any] = {"plugins": plugins} if plugins else {}
    if not sys.stdout.isatty():  # piped or a SLURM log: Lightning's bar would end as a garbled frame; the epoch
        extra["enable_progress_bar"] = False  # lines are the progress there
    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)
    except InstantiationException as e:
        if not isinstance(e.__cause__, ValueError | TypeError | MisconfigurationException):
            raise
        detail = str(e.__cause__).splitlines()[0] if str(e.__cause__).strip() else type(e.__cause__).__name__
        raise ConfigError(f"the Lightning Trainer refuses the trainer.* settings: {detail}") from None


def unsharded(model: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    """`model` itself, or for a model FSDP2 sharded (trainer=fsdp2) a plain copy with its full weights (on rank 0;
    gathering is collective, so every process calls this)."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_rank_zero():
        return model
    full, _ = build_peft_model(cfg)
    full.load_state_dict(state, assign=True)  # the dtypes the task trained in (frozen weights bf16)
    return full


def export_model(model: torch.nn.Module, path: str) -> None:
    """Merge the method into plain layers and write a `from_pretrained`-loadable folder."""
    merge_peft(model)
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(
            f"export_to needs a transformers/diffusers model; {type(model).__name__} has no save_pretrained"
        )
    model.save_pretrained(path)


def ensure_pretrained(cfg: DictConfig) -> None:
    """Make the model's local pretrained weights first if the model config says how and they are not there.

    The quickstart's ViT ships with the package, so this runs only for a folder of one's own
    (model.pretrained=${paths.cache_dir}/vit_digits_0-4): the recipe is pinned (its seed, one thread), whatever
    the seed or threads of the run that triggers it."""
    source, recipe = cfg.model.get("pretrained"), cfg.model.get("pretrain_experiment")
    if not source or not recipe or not looks_local(str(source)):
        return
    folder = Path(source)
    if folder.exists() and any(folder.glob("*.safetensors")):
        return
    from ..assets import ROOT as ASSETS

    if folder.absolute().is_relative_to(ASSETS):
        raise ConfigError(f"the packaged source model {folder} is missing; {cfg.model.get('pretrained_hint')}")
    make_pretrained(recipe, folder, cfg, again=folder.exists())


def make_pretrained(recipe: str, target: Path, cfg: DictConfig, *, again: bool = False) -> dict[str, Any]:
    """Run experiment=`recipe` (its own seed and threads) and export the model to `target`; returns its record."""
    from hydra import compose

    from .record import check_writable

    check_writable(target.parent, "the cache folder", fix="paths.cache_dir=")
    why = "holds no weights (an interrupted pre-training)" if again else "not found"
    print(f"pretrained weights {target} {why}: making them with experiment={recipe} (once, then cached)")
    sub = compose(
        config_name="config",
        overrides=[
            f"experiment={recipe}",
            f"paths.root_dir={cfg.paths.root_dir}",
            f"paths.cache_dir={cfg.paths.cache_dir}",
            f"+paths.pretrain_dir={target.parent / (target.name + '_run')}",
            "logger=none",
            *cfg.model.get("pretrain_overrides", []),
        ],
    )
    with open_dict(sub):
        sub.paths.output_dir = sub.paths.pretrain_dir
        sub.rerun = True
        sub.export_to = str(target)
    check_config(sub)
    record = train(sub)[0]
    if record.get("status") != "ok":
        raise ConfigError(f"pre-training for {cfg.model.name} ended with status {record.get('status')}")
    return record
