"""Cheap checks before anything slow: the data set's files exist, and the hub stays offline when the files are local.

A run that would fail on a missing data set must say so before loading a 1.3 GB model or retrying the hub for a
minute (`preflight`, called by `train` first thing). Only paths the data config names under its path keys are
checked, and only absolute ones (configs build them from `paths.data_dir`); a hub id such as
`meta-math/MetaMathQA` is not a path and is left to its loader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, DatasetFormatError

# the data modules' arguments that name files or folders they read (configs/data/*.yaml)
PATH_KEYS = ("data_dir", "root", "train_root", "val_root", "train_gt_root", "val_gt_root", "train_split",
             "val_split", "json_path", "val_json_path")  # fmt: skip


def missing_data_paths(cfg: DictConfig) -> list[tuple[str, Path]]:
    """(key, path) for every path the data module's config names that does not exist."""
    module = cfg.data.get("module")
    if module is None:
        return []
    spec: dict[str, Any] = OmegaConf.to_container(module, resolve=True)  # type: ignore[assignment]
    if spec.get("download"):
        return []
    out = []
    for key in PATH_KEYS:
        value = spec.get(key)
        if isinstance(value, str) and os.path.isabs(value) and not Path(value).exists():
            out.append((key, Path(value)))
    return out


def check_data(cfg: DictConfig) -> None:
    missing = missing_data_paths(cfg)
    if missing:
        key, path = missing[0]
        more = f" (and {len(missing) - 1} more: {', '.join(k for k, _ in missing[1:])})" if len(missing) > 1 else ""
        raise DatasetFormatError(
            f"data {cfg.data.name}: {path} not found ({key}){more}; put the data set there as "
            f"configs/data/{cfg.data.name}.yaml describes, or point paths.data_dir= at the folder that holds it"
        )


def hub_repo(source: Any) -> str | None:
    """The hub repository id a `model.pretrained` value names, or None for a local path / no weights."""
    if not isinstance(source, str) or not source or Path(source).exists() or os.path.isabs(source):
        return None
    repo = source.removeprefix("hf-hub:")
    return repo if repo.count("/") == 1 else None


def offline_if_cached(cfg: DictConfig) -> bool:
    """Turn the hub offline for this process when the model's files are already in the local cache.

    With the files local, a run needs no network; without this, a machine that has none retries the hub for a
    minute before the loader falls back to the cache."""
    import huggingface_hub
    from huggingface_hub import constants

    repo = hub_repo(cfg.model.get("pretrained"))
    if repo is None or constants.HF_HUB_OFFLINE:
        return False
    sub = cfg.model.get("subfolder")
    names = [f"{sub}/config.json" if sub else "config.json", "model_index.json"]
    if not any(isinstance(huggingface_hub.try_to_load_from_cache(repo, n), str) for n in names):
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    return True


# keys a command line often sets, with the kind of value they take and its range: a wrong type or an out-of-range
# value is one line, not a traceback deep in Lightning, torch's optimiser or the loader (or, for a flag, silently
# true: `dry_run=maybe`; for lr=0, a run that trains nothing and says ok)
class Kind(NamedTuple):
    kind: str  # bool, int or number
    low: float | None = None  # the smallest value allowed
    high: float | None = None  # the largest value allowed
    above: bool = False  # `low` itself is not allowed (a learning rate of 0 trains nothing)


SEED_MAX = 2**32 - 1  # numpy's seed range, which Lightning's seed_everything enforces

VALUE_KINDS: dict[str, Kind] = {
    "dry_run": Kind("bool"),
    "rerun": Kind("bool"),
    "seed": Kind("int", 0, SEED_MAX),
    "cpu_threads": Kind("int", 1),
    "data.module.batch_size": Kind("int", 1),
    "data.module.eval_batch_size": Kind("int", 1),
    "data.module.num_workers": Kind("int", 0),
    "trainer.max_epochs": Kind("int", -1),
    "trainer.max_steps": Kind("int", -1),
    "trainer.accumulate_grad_batches": Kind("int", 1),
    "callbacks.checkpoint.every_n_train_steps": Kind("int", 0),
    "task.optimizer.lr": Kind("number", 0, above=True),
    "task.optimizer.weight_decay": Kind("number", 0),
    "task.lr": Kind("number", 0, above=True),
}


def check_values(cfg: DictConfig) -> None:
    """The keys of `VALUE_KINDS` that are set hold a value of their kind, in its range (ConfigError naming the key
    and what it takes otherwise)."""
    for key, spec in VALUE_KINDS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        is_int = isinstance(value, int) and not isinstance(value, bool)
        ok = {"bool": isinstance(value, bool), "int": is_int, "number": is_int or isinstance(value, float)}[spec.kind]
        if ok and spec.low is not None:
            ok = value > spec.low if spec.above else value >= spec.low
        if ok and spec.high is not None:
            ok = value <= spec.high
        if not ok:
            wanted = {"bool": "true or false", "number": "a number (e.g. 1e-4)", "int": "a whole number"}[spec.kind]
            raise ConfigError(f"{key}={value!r} is not allowed; {key} takes {wanted}{_range(spec)}")


def _range(spec: Kind) -> str:
    def num(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    if spec.low is not None and spec.high is not None:
        return f" from {num(spec.low)} to {num(spec.high)}"
    return "" if spec.low is None else f" {'>' if spec.above else '>='} {num(spec.low)}"


def check_export_to(cfg: DictConfig) -> None:
    """`export_to=` lies in a folder this process can write: said before training, not after it."""
    if not cfg.get("export_to"):
        return
    target = Path(str(cfg.export_to)).absolute()
    place = next(p for p in (target, *target.parents) if p.exists())
    if not (place.is_dir() and os.access(place, os.W_OK)):
        raise ConfigError(f"export_to={cfg.export_to}: {place} is not a writable folder; give export_to= a folder "
                          "that can be written")  # fmt: skip


def preflight(cfg: DictConfig) -> None:
    check_data(cfg)
    check_export_to(cfg)
    offline_if_cached(cfg)
