"""The training loader every data module shares: epoch-seeded order, resumable in the middle of an epoch.

A run killed at step k of an epoch must continue with batch k+1 of the same order and the same random
augmentations as an uninterrupted run. Three pieces make that exact:

- the order: a `DistributedSampler` seeded by (seed, epoch), under one or several processes (Lightning keeps
  a DistributedSampler it is given, so every world size uses this one);
- the position: torchdata's `StatefulDataLoader`, whose `state_dict()` (the batches yielded so far) Lightning
  saves in each checkpoint and restores on resume;
- the augmentations: each sample is drawn with the RNGs (torch CPU, numpy, random) seeded by
  (seed, epoch, index) and restored afterwards (`SeededSamples`), so a sample's crop or flip depends neither on
  what ran before it (the model's dropout, a resume, the worker that loaded it) nor changes the model's RNG.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader


class EpochSampler(DistributedSampler):
    """A DistributedSampler that yields `(epoch, index)`, so each sample knows the epoch it is drawn in."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch  # read at the first draw (a generator), after Lightning's set_epoch
        for i in super().__iter__():
            yield epoch, i


class SeededSamples(Dataset):
    """`dataset[index]` under RNGs seeded by (seed, epoch, index); the caller's RNG states are restored."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        state = np.random.SeedSequence([self.seed, epoch, index]).generate_state(2)
        saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
        torch.random.default_generator.manual_seed(int(state[0]))  # CPU only: CUDA's RNG stays the model's
        np.random.seed(int(state[1]))
        random.seed(int(state[1]))
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


class ResumableLoader(StatefulDataLoader):
    """torchdata's StatefulDataLoader, without the deprecation warning its constructor triggers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, deprecated in torch 2.x
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            super().__init__(*args, **kwargs)


def seeded_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    num_workers: int,
    trainer: L.Trainer | None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> ResumableLoader:
    """The shuffled, resumable training loader whose batches depend on (seed, epoch) only (module docstring)."""
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = EpochSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    # a resumed run restores the loader's position before Lightning sets this epoch's sampler epoch: set it now
    sampler.set_epoch(trainer.current_epoch if trainer is not None else 0)
    return ResumableLoader(
        SeededSamples(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=False,
        collate_fn=collate_fn,
    )
