"""Read every sample of a run's data once, before a sweep, and list every one that cannot be read.

A corrupt image deep in a data set otherwise ends a multi-hour run at the moment it is first read. The check
goes through the data module exactly as a run builds it (same config, same split files, same loaders), reads
every item of the training and validation sets once, and collects the failures instead of stopping at the
first: each line names the item and carries the loader's own message (for the split-file data sets, the file
and its line in the split file).
"""

from __future__ import annotations

import sys
from typing import Any

from torch.utils.data import DataLoader, Dataset


class _Checked(Dataset):
    """`dataset[i]` as `(i, None)` when it loads, `(i, "<error>")` when it does not."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, str | None]:
        try:
            self.dataset[index]
        except Exception as e:  # every failure is a finding, whatever raised it
            from ..errors import UserError

            return index, str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        return index, None


def _first(items: list[Any]) -> Any:
    return items[0]


def verify_datamodule(datamodule: Any, num_workers: int = 0, progress: bool = True) -> tuple[int, list[str]]:
    """(items read, problems): every item of the module's train and validation sets read once."""
    from tqdm import tqdm

    datamodule.setup("fit")  # a missing split file or folder raises here: one line, as in a run
    problems: list[str] = []
    total = 0
    for split in ("train", "val"):
        dataset = getattr(datamodule, f"{split}_set", None)
        if dataset is None:
            continue
        loader = DataLoader(_Checked(dataset), batch_size=1, num_workers=num_workers, collate_fn=_first)
        bar = tqdm(loader, total=len(loader), desc=f"reading {split}", unit="item", disable=not progress,
                   file=sys.stderr, leave=False)  # fmt: skip
        for index, error in bar:
            total += 1
            if error is not None:
                problems.append(f"{split} item {index}: {error}")
    return total, problems
