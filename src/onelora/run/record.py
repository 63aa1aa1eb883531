"""The run record (`result.json`) and the run directory's lock: what a run is doing, written as it happens.

A run writes `status: running` with its pid, host and start time before anything slow, and its final status at
the end (`ok`, `failed`, `diverged`, `interrupted`). A record left `running` by a process that no longer exists
on this host is reported as `interrupted` (`effective_status`). The lock file (`.run.lock`: pid, host, start,
SLURM job id) keeps a second process out of a run directory another live process holds; a lock whose process
is gone does not block. `SweepOutcome` (a Hydra callback, configs/hydra/default.yaml) checks that the log
directory is writable before Hydra writes into it, and counts a multirun's failed jobs for run.py's exit code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import RunDirError, UserError

RECORD = "result.json"
LOCK = ".run.lock"


# --- files ----------------------------------------------------------------------------------
def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def check_writable(directory: str | Path, what: str = "the run directory", fix: str = "paths.log_dir=") -> None:
    """Create `directory` and a file in it, or raise RunDirError naming it and the setting that moves it (`fix`)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write_test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunDirError(
            f"cannot write {what} {directory} ({e.strerror or e}); "
            f"give a writable folder with {fix}..."
            + (" (or hydra.run.dir= / hydra.sweep.dir=)" if fix == "paths.log_dir=" else "")
        ) from None


# --- who runs -------------------------------------------------------------------------------
def host() -> str:
    return socket.gethostname()


def pid_alive(pid: Any) -> bool:
    """Whether process `pid` exists on this host (a zombie counts as gone)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a killed child not yet reaped is a zombie: gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def process_info() -> dict[str, Any]:
    info: dict[str, Any] = {"pid": os.getpid(), "host": host(), "started_at": now()}
    if os.environ.get("SLURM_JOB_ID"):
        info["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return info


def holder_gone(info: dict[str, Any]) -> bool:
    """Whether the process a lock or a `running` record names is known to be gone (or is this process)."""
    if info.get("host") != host():  # another machine: alive unless it is our own requeued SLURM job
        return bool(info.get("slurm_job_id")) and info.get("slurm_job_id") == os.environ.get("SLURM_JOB_ID")
    return info.get("pid") == os.getpid() or not pid_alive(info.get("pid"))


def effective_status(record: dict[str, Any]) -> str:
    """The record's status, with `running` turned into `interrupted` when its process is gone on this host."""
    status = str(record.get("status", "unknown"))
    if status == "running" and record.get("host") == host() and not pid_alive(record.get("pid")):
        return "interrupted"
    return status


def acquire_lock(directory: Path) -> Path:
    """Take the run directory's lock, or raise RunDirError naming the live process that holds it."""
    check_writable(directory)
    lock = directory / LOCK
    mine = process_info()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_record(lock)
            if holder is None and time.time() - _mtime(lock) < 5:  # being written right now
                time.sleep(0.5)
                holder = read_record(lock)
            if holder is not None and not holder_gone(holder):
                elsewhere = holder.get("host") != host()  # its process cannot be checked from here
                raise RunDirError(
                    f"{directory} is in use by process {holder.get('pid')} on {holder.get('host')} "
                    f"(since {holder.get('started_at')}); wait for it to end or stop it"
                    + (f" (if it is gone, delete {lock})" if elsewhere else "")
                ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        return lock
    raise RunDirError(f"cannot take the lock {lock}: another process keeps taking it")


def release_lock(lock: Path) -> None:
    """Remove the lock if it is still this process's."""
    holder = read_record(lock)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == host():
        lock.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# --- the record's fields ------------------------------------------------------------------------
def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def git_sha() -> str | None:
    try:
        root = Path(__file__).resolve().parents[3]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for pkg in ("onelora", "torch", "lightning", "transformers", "diffusers", "timm", "torchmetrics", "hydra-core",
                "peft"):  # fmt: skip
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def base_record(cfg: Any) -> dict[str, Any]:
    """The record a run writes when it starts (`status: running`, who runs it); the end fills in the rest."""
    return {
        "task": cfg.task.name,
        "model": cfg.model.name,
        "peft": cfg.peft.name,
        "data": cfg.data.name,
        "seed": cfg.seed,
        "name": cfg.name,
        "status": "running",
        "metric_name": cfg.task.metric.name,
        "metric_direction": cfg.task.metric.direction,
        "metric_best": None,
        "metrics": {},
        "overrides": hydra_overrides(),
        "git_sha": git_sha(),
        "versions": versions(),
        **process_info(),
    }


# --- run-folder names -----------------------------------------------------------------------------
MAX_DIRNAME = 200  # bytes: under the 255 a file name may have (NAME_MAX); names that fit kept as they were


def spell_bools(overrides: str) -> str:
    """Booleans spelled one way: a multirun writes `True`/`False`, a single run the text as typed (`false`)."""
    return re.sub(r"=(True|False)(?=,|$)", lambda m: "=" + m.group(1).lower(), overrides)


def run_dirname(override_dirname: str) -> str:
    """A run folder's name from Hydra's `override_dirname`: booleans spelled one way (`spell_bools`), so one setting
    always names the same folder, and at most MAX_DIRNAME bytes. A longer name keeps its first overrides up to a
    comma and ends in `~` and a hash of the whole (stable, so a rerun finds its folder); the record's `overrides`
    and the folder's `.hydra/overrides.yaml` keep every override, and reports group runs by those."""
    name = spell_bools(override_dirname)
    if len(name.encode()) <= MAX_DIRNAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    head = name.encode()[: MAX_DIRNAME - len(digest) - 2].decode(errors="ignore")
    head = head[: head.rfind(",") + 1] if "," in head else head  # cut at an override's end where there is one
    return f"{head}~{digest}"


def _register_resolvers() -> None:
    # here because Hydra imports this module (the callback below) before it resolves a run's folder, in the
    # launching process and, unpickling the callbacks, in a submitit worker
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_dirname"):
        OmegaConf.register_new_resolver("run_dirname", run_dirname)
    if not OmegaConf.has_resolver("asset"):  # ${asset:vit_digits_0-4}: a file shipped with the package
        from ..assets import asset_path

        OmegaConf.register_new_resolver("asset", asset_path)


_register_resolvers()


# --- a multirun's outcome -----------------------------------------------------------------------
def _hydra_callback_base() -> type:
    from hydra.experimental.callback import Callback

    return Callback


class SweepOutcome(_hydra_callback_base()):
    """Hydra callback: the log directory must be writable before Hydra writes into it (one line, exit 2);
    after a multirun, the jobs whose record is not `ok` are counted (`failed_jobs`) and listed."""

    failed_jobs: list[str] = []  # class-level: read by run.py after Hydra returns
    job_errors: dict[str, str] = {}  # run dir -> status, noted by run.py for the jobs that raised in this process

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config, "run")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._started = time.time() - 1.0  # the records this sweep writes are newer than this
        type(self).failed_jobs, type(self).job_errors = [], {}
        self._check(config, "sweep")

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        # the jobs of this process (a local launcher); remote launchers call this elsewhere, leaving it empty
        runtime = getattr(getattr(job_return, "hydra_cfg", None), "hydra", None)
        if runtime is not None:
            self._jobs = [*getattr(self, "_jobs", []), Path(str(runtime.runtime.output_dir)).resolve()]

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        mine = set(getattr(self, "_jobs", []))  # other multiruns may share the sweep dir (scripts/sweep.py --jobs)
        failed = dict(type(self).job_errors)  # e.g. refused by another process's lock: that record is not ours
        for path in sorted(sweep_dir.rglob(RECORD)):
            record = read_record(path)
            if mine and path.parent.resolve() not in mine:
                continue
            if _mtime(path) >= self._started and (record is None or record.get("status") != "ok"):
                failed.setdefault(str(path.parent), "unreadable" if record is None else effective_status(record))
        failed = [f"{status}: {where}" for where, status in sorted(failed.items())]
        type(self).failed_jobs = failed
        if failed:
            print(f"{len(failed)} job(s) of this sweep did not end ok:", *failed, sep="\n  ", file=sys.stderr)

    @staticmethod
    def _check(config: Any, mode: str) -> None:
        from omegaconf import OmegaConf

        for key in ("paths.root_dir", "paths.log_dir", "paths.data_dir", "paths.cache_dir"):
            if _select(config, key, OmegaConf) == "":  # `paths.log_dir=` would write under the filesystem's root
                print(
                    f"error: {key} is empty; give a folder ({key}=/path) or leave it out for the default",
                    file=sys.stderr,
                )
                sys.exit(2)
        launcher = str(_select(config, "hydra.launcher._target_", OmegaConf) or "") if mode == "sweep" else ""
        if launcher.endswith("SlurmLauncher") and shutil.which("srun") is None:  # submitit's own test for SLURM
            print("error: hydra/launcher=slurm needs SLURM (no `srun` on this machine); run it on the cluster's "
                  "login node, or use hydra/launcher=local here", file=sys.stderr)  # fmt: skip
            sys.exit(2)
        dirs = [f"hydra.{mode}.dir", "paths.log_dir"]
        directory = next((d for key in dirs if (d := _select(config, key, OmegaConf)) is not None), None)
        if directory is None:
            return
        try:
            check_writable(directory, "the log directory")
        except RunDirError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)


def _select(config: Any, key: str, omegaconf: Any) -> str | None:
    try:
        value = omegaconf.select(config, key, throw_on_resolution_failure=True)
    except Exception:  # an interpolation only a job can resolve (${hydra:job.num}): try the next key
        return None
    return None if value is None else str(value)


def record_failure(cfg: Any, error: BaseException) -> None:
    """Make sure a run that ended in `error` has a `failed` record (errors before train() wrote one).

    Leaves alone a record this process already finished, and the record of another live process
    (a second process refused by the lock must not overwrite the first one's record)."""
    if isinstance(error, RunDirError) or cfg.get("dry_run"):
        return
    try:
        path = Path(str(cfg.paths.output_dir)) / RECORD
        current = read_record(path)
        if current and current.get("pid") == os.getpid() and current.get("status") != "running":
            return
        if current and current.get("status") == "ok" and not cfg.get("rerun"):  # a finished run stays finished
            return
        if current and current.get("status") == "running" and not holder_gone(current):
            return
        record = base_record(cfg) | {"status": "failed", "error": f"{type(error).__name__}: {error}",
                                     "finished_at": now()}  # fmt: skip
        write_json_atomic(path, record)
    except Exception:  # noqa: BLE001  (a config too broken to name its run, or an unwritable disk: nothing to record)
        return


def job_failed(cfg: Any, error: Exception) -> None:
    """run.py's handling of a run that raised: the failure is recorded; a user error is printed as one line (exit 2
    from a single run); in a multirun the job is counted as failed and the next one starts (a bug's traceback goes
    to the log); outside a multirun a bug is raised again, traceback and all."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    record_failure(cfg, error)
    sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if sweep:
        SweepOutcome.job_errors[str(Path(HydraConfig.get().runtime.output_dir))] = "failed"
    if isinstance(error, UserError):
        print(f"error: {error}", file=sys.stderr)
        if not sweep:
            sys.exit(2)
    elif not sweep:
        raise error
    else:
        logging.getLogger("onelora").error("job %s failed", HydraConfig.get().runtime.output_dir, exc_info=error)


def sweep_exit_code() -> int:
    """The number of jobs of the multirun that just ended that did not end ok, at most 125 (0 after a single run)."""
    return min(len(SweepOutcome.failed_jobs), 125)
