"""Tests never reach a model hub: offline mode before anything imports huggingface_hub. Tests never write into the
clone's `logs/` (a user's demo and sweeps live there): every run goes under a tmp folder."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

LOGS = Path(__file__).resolve().parents[1] / "logs"


def _folders(root: Path) -> dict[str, int]:
    """Every folder under `root` with its modification time (a file added, replaced or removed changes it)."""
    return {d: os.stat(d).st_mtime_ns for d, _, _ in os.walk(root)}


@pytest.fixture(scope="session", autouse=True)
def _the_clones_logs_stay_as_they_were() -> Iterator[None]:
    before = _folders(LOGS)
    yield
    after = _folders(LOGS)
    changed = sorted(d for d in before.keys() | after.keys() if before.get(d) != after.get(d))
    assert not changed, f"a test wrote into {LOGS} (give it paths.log_dir= or hydra.run.dir= under tmp_path): " + (
        ", ".join(changed[:5])
    )


# what Lightning and torch.distributed leave in os.environ after an in-process distributed run (a strategy with
# one process): a later `run.py trainer.devices=2` child inheriting LOCAL_RANK believes its processes were
# launched for it, never starts rank 1 and waits for it forever
DISTRIBUTED_ENV = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
                   "MASTER_ADDR", "MASTER_PORT")  # fmt: skip


@pytest.fixture(autouse=True)
def _no_distributed_env_leaks() -> Iterator[None]:
    before = {k: os.environ.get(k) for k in DISTRIBUTED_ENV}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
