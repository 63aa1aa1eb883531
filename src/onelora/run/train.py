"""`run(cfg)`: seed, build the model and the method, fit, validate, write `result.json`.

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

from ..errors import ConfigError, user_errors  # noqa: F401  (re-exported: onelora.run.train.ConfigError, user_errors)
from ..models import looks_local
from ..peft import merge_peft
from .build import build_peft_model, peft_kwargs, peft_method
from .progress import run_event
from .record import (  # noqa: F401  (re-exported: the record's helpers lived here)
    RECORD,
    acquire_lock,
    base_record,
    effective_status,
    git_sha,
    hydra_overrides,
    read_record,
    release_lock,
    versions,
    write_json_atomic,
)
from .record import now as _now

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
def is_rank_zero() -> bool:
    """Global rank 0: Lightning's own view (RANK, LOCAL_RANK, SLURM_PROCID...; the global rank once a strategy set it)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def check_config(cfg: DictConfig) -> None:
    """The checks before anything is built: a value of the wrong type for a common key, a bad method option."""
    from ..peft import validate_peft
    from .preflight import check_values

    check_values(cfg)  # a value of the wrong type for a common key: one line, before anything is built
    validate_peft(peft_method(cfg), **peft_kwargs(cfg))  # a bad method option: one line, before any weight loads


def train(cfg: DictConfig) -> tuple[dict[str, Any], Any]:
    """Train and validate as `cfg` says; returns the run record (also written to result.json) and the trained
    LightningModule (None if skipped)."""
    check_fit(cfg)
    from .batching import apply_global_batch

    apply_global_batch(cfg)  # the global batch is reached by accumulation, computed from micro batch and devices
    out = Path(cfg.paths.output_dir)
    record_path = out / RECORD
    previous = read_record(record_path)
    if previous and previous.get("status") == "ok" and not cfg.rerun:
        best = previous.get("metric_best")
        best_s = f"{best:.4f}" if isinstance(best, int | float) else "n/a"  # as the summary line prints it
        print(f"already done: {record_path} ({previous.get('metric_name')}={best_s}); rerun=true to redo")
        run_event("skip", cfg, previous)
        return previous, None
    if (said := damaged_record(record_path, previous)) is not None:
        log.warning("%s; the run resumes from its last checkpoint, which keeps its metrics", said)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from ..tasks.base import DivergedError
    from .callbacks import EfficiencyMonitor
    from .callbacks.preemption import EXIT_SIGTERM, Preemption, cluster_plugins
    from .checkpoints import resume_checkpoint, set_aside_checkpoints, trained_keys

    # one process per run directory (a second one stops here with one line); the record says `running` from now
    lock = acquire_lock(out) if is_rank_zero() else None
    record = base_record(cfg)
    if previous:
        record["started_at"] = previous.get("started_at", record["started_at"])
    if lock is not None:
        write_json_atomic(record_path, record)
    monitor: EfficiencyMonitor | None = None
    task = None
    preemption: Preemption | None = None
    stopped = False
    trainer: Any = None
    ctrl_c = False  # Lightning turns Ctrl-C into a graceful stop and sys.exit(1)
    threads = torch.get_num_threads()  # restored at the end: cpu_threads holds for this run only
    try:
        from ..data.synthetic import ensure_synthetic
        from .preflight import preflight

        ensure_synthetic(cfg.data)  # a smoke experiment's tiny data set is built on first use
        preflight(cfg)  # cheap checks (the data set's files) before any weight is loaded
        if cfg.rerun and is_rank_zero():  # starts afresh whatever the status; old checkpoints kept aside, not deleted
            set_aside_checkpoints(out / "checkpoints")
        ensure_pretrained(cfg)
        if cfg.get("cpu_threads"):  # after the pre-training above, which runs on its own pinned count
            torch.set_num_threads(int(cfg.cpu_threads))
        record["cpu_threads"] = torch.get_num_threads()  # the last bits of a CPU run depend on it
        run_event("start", cfg)
        if lock is not None:  # the resolved config, for tools that rebuild the run's model (scripts/math_answers.py)
            OmegaConf.save(cfg, out / "config.yaml", resolve=True)

        import lightning as L
        from hydra.utils import instantiate

        L.seed_everything(cfg.seed, workers=True, verbose=False)
        model, counts = build_peft_model(cfg)
        record.update(
            peft_params=counts.peft,
            head_params=counts.head,
            trainable_params=counts.trainable,
            total_params=counts.total,
            adapted_layers=counts.adapted_layers,
            params_by_group=counts.groups,
        )
        datamodule = instantiate(cfg.data.module)
        task = instantiate(
            cfg.task.module,
            model=model,
            optimizer=instantiate(cfg.task.optimizer),
            scheduler=OmegaConf.to_container(cfg.task.scheduler) if cfg.task.get("scheduler") else None,
        )
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
        loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
        monitor = next((c for c in callbacks if isinstance(c, EfficiencyMonitor)), None)
        preemption = Preemption()  # SIGTERM and submitit's requeue signal: checkpoint, record, exit or requeue
        plugins = cluster_plugins()  # under SLURM: Lightning's auto-requeue off, submitit owns the signal
        trainer = instantiate_trainer(cfg, [*callbacks, preemption], loggers, plugins)
        for lg in loggers:
            lg.log_hyperparams(
                {"peft_params": counts.peft, "trainable_params": counts.trainable, "total_params": counts.total}
            )
        # the newest checkpoint that loads and holds every trained tensor (not only last.ckpt's target)
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
            if monitor is not None:
                record.update(monitor.summary())
                monitor = None
            task.start_final_eval()
            trainer.validate(task, datamodule=datamodule, verbose=False)
            record[task.final_eval] = task.final_eval_metrics
        if record["status"] == "ok" and cfg.get("export_to"):
            full = unsharded(model, cfg)  # every process takes part in gathering a sharded (FSDP2) model
            if is_rank_zero():
                export_model(full, cfg.export_to)
                record["exported_to"] = str(cfg.export_to)
    except DivergedError as e:
        record.update(status="diverged", error=str(e))
        print(f"run diverged: {e}", file=sys.stderr)
    except SIGTERMException:  # Lightning stopped at a step end; RunCheckpoint saved a checkpoint there
        _interrupted(record, task, "SIGTERM")
        stopped = True
    except KeyboardInterrupt:
        record["status"] = "interrupted"
        raise
    except SystemExit as e:
        if trainer is None and e.code in (130, EXIT_SIGTERM):  # the pre-training run (ensure_pretrained) was stopped
            _interrupted(record, task, "Ctrl-C" if e.code == 130 else "SIGTERM")
            raise
        if trainer is None or not trainer.interrupted:
            record.update(status="failed", error=f"SystemExit: {e}")
            raise
        _interrupted(record, task, "Ctrl-C")
        ctrl_c = True
    except BaseException as e:
        record.update(status="failed", error=f"{type(e).__name__}: {e}")
        if type(e).__name__ == "InstantiationException" and isinstance(e.__cause__, user_errors()):
            raise e.__cause__ from None  # a user error raised while Hydra built an object: one line, not a traceback
        raise
    finally:
        if monitor is not None:
            record.update(monitor.summary())
        record["finished_at"] = _now()
        if lock is not None:
            write_json_atomic(record_path, record)
            release_lock(lock)
        _finish_wandb()
        torch.set_num_threads(threads)
        run_event("end", cfg, record)
    if is_rank_zero():  # one summary line, not one per DDP process
        _print_summary(record, record_path)
    if ctrl_c:
        sys.exit(130)  # as a shell reports a process ended by SIGINT; a multirun stops here
    if stopped:
        if preemption is not None:
            preemption.requeue()  # under submitit, after its requeue signal: requeue the job and exit
        sys.exit(EXIT_SIGTERM)  # 143, as if SIGTERM had ended the process, so schedulers see a stopped job
    return record, task


def damaged_record(path: Path, previous: dict[str, Any] | None) -> str | None:
    """What is wrong with a run's previous record, if it is damaged: not a JSON record, or `running` while its
    process is gone (killed after its last checkpoint, or before it)."""
    if previous is None and path.exists():
        return f"{path} is damaged (not a JSON record)"
    if previous and previous.get("status") == "running" and effective_status(previous) == "interrupted":
        return f"{path} says running, but its process {previous.get('pid')} is gone"
    return None


def _interrupted(record: dict[str, Any], task: Any, by: str) -> None:
    """A run stopped by a signal: resumable, with what it had measured so far."""
    record.update(status="interrupted", error=f"stopped by {by}; re-running the same command resumes")
    record.update(metric_best=getattr(task, "best", None), metrics=getattr(task, "final_metrics", {}))


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
