"""Shared test helpers: compose the suite's Hydra config, write data fixtures in their real formats."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from onelora.data.synthetic import write_cifar10  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# a child process (run.py, scripts/) imports the tests' helpers and this clone's own sources, not whichever
# checkout the environment's editable install points at
CHILD_PATH = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src")])


@contextmanager
def hydra_cfg(tmp_path: Path, *overrides: str) -> Iterator[DictConfig]:
    """Compose `configs/config.yaml` with all paths under tmp_path (Hydra stays initialised inside)."""
    paths = [
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.output_dir={tmp_path / 'run'}",
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        yield compose(config_name="config", overrides=[*paths, *overrides])


class KillAtEpochStart:
    """A Lightning callback (duck-typed) that SIGKILLs its own process when `epoch` starts: a real kill -9."""

    def __new__(cls, epoch: int):  # noqa: D102 (built through Hydra's _target_)
        import os
        import signal

        import lightning as L

        class _Kill(L.Callback):
            def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
                if trainer.current_epoch == epoch:
                    os.kill(os.getpid(), signal.SIGKILL)

        return _Kill()


class SignalAtStep:
    """A Lightning callback (duck-typed) that sends `signal` (a name: SIGKILL, SIGTERM, SIGUSR2) to its own process
    when training step `step` ends: a real signal at a known point. With `once`, a marker file makes it fire once
    (a requeued job runs the same callback again). With `micro_batch`, it fires when that micro-batch (counted over
    the whole run, from 0) ends instead, e.g. inside a gradient-accumulation window; with `val_batch`, when that
    validation batch ends while the optimizer is at `step`."""

    def __new__(cls, step: int, signal: str, once: str | None = None, micro_batch: int | None = None,
                val_batch: int | None = None):  # fmt: skip  # noqa: D102 (built through Hydra's _target_)
        import os
        import signal as signals
        from pathlib import Path

        import lightning as L

        def fire() -> None:
            if once:
                if Path(once).exists():
                    return
                Path(once).touch()
            os.kill(os.getpid(), getattr(signals, signal))

        class _Signal(L.Callback):
            def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
                if val_batch is not None:
                    return
                if micro_batch is None and trainer.global_step == step:
                    fire()
                elif micro_batch is not None and trainer.fit_loop.total_batch_idx == micro_batch:
                    fire()

            def on_validation_batch_end(self, trainer: L.Trainer, module: object, outputs: object, batch: object,
                                        batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
                if val_batch == batch_idx and not trainer.sanity_checking and trainer.global_step == step:
                    fire()

        return _Signal()


class SlowSteps:
    """A Lightning callback (duck-typed) that sleeps `seconds` after each training step and, after the first, creates
    the file $ONELORA_TEST_TRAINING: a run slow enough to be interrupted mid-training, and a sign that it trains."""

    def __new__(cls, seconds: float):  # noqa: D102 (built through Hydra's _target_)
        import os
        import time
        from pathlib import Path

        import lightning as L

        class _Slow(L.Callback):
            def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
                if os.environ.get("ONELORA_TEST_TRAINING"):
                    Path(os.environ["ONELORA_TEST_TRAINING"]).touch()
                time.sleep(seconds)

        return _Slow()


def r_hat(d: int, even: bool) -> int:
    r = int(math.sqrt(d) + 0.5)
    return r // 2 * 2 if even else r


FORMULAS = {  # the paper's Table 1, per layer
    "onelora": lambda k, d: d,
    "bitfit": lambda k, d: d,
    "lora": lambda k, d: k + d,
    "dora": lambda k, d: k + 2 * d,
    "vera": lambda k, d: d + 1,
    "mora1": lambda k, d: r_hat(d, False) ** 2,
    "mora6": lambda k, d: r_hat(d, True) ** 2,
}
