"""Human-rated movie-review sentences (Hutto & Gilbert, ICWSM 2014), for the real-weights tier.

10,605 Rotten Tomatoes sentences (Pang & Lee's, the source of MR/SST), each with the mean sentiment of at least 20
human raters on [-4, 4]. They ship inside vaderSentiment's source distribution on PyPI
(`additional_resources/hutto_ICWSM_2014.tar.gz`, MIT licensed); on first use (never at import) the pinned sdist
is fetched with `pip download`, both archives are checked against their pinned SHA-256 and the ratings file is
extracted to `<data_dir>/movies/`. Offline with nothing there: one line naming the command to run where PyPI is
reachable. A corrupt or truncated file: one line naming it.

Splits (fixed, whatever the run seed): the 37 neutral sentences (mean exactly 0) are dropped, and the second copy
of the 2 sentences the file holds twice; the other 10,566 are permuted with `split_seed` 0; the first 2,000 are
the test split, the next 2,000 the holdout split (for choosing a learning rate), the other 6,566 the training split. `train_size`/`eval_size` take the first N of a
split (`make real` uses fewer, see the README).

- `SentimentDataModule`: sentence classification, label 1 if the mean rating is positive, else 0 (task=sentiment).
- `write_instructions(root)`: the same splits as MetaMathQA-format JSON for the math task's machinery: the query
  asks for the rating, the response is "The answer is: X" with X the mean rating rounded half away from zero.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import DatasetFormatError
from .loaders import seeded_loader

SDIST = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
INNER_SHA256 = "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"
RATINGS = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
RATINGS_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
SPLITS = {"test": (0, 2000), "holdout": (2000, 4000), "train": (4000, None)}
INSTRUCTION = "Rate the sentiment of this movie review sentence from -4 (very negative) to 4 (very positive)."


def fetch_command(folder: Path) -> str:
    return f"{sys.executable} -m pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d {folder}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensure_ratings(data_dir: str | Path, folder: Path | None = None) -> Path:
    """`<data_dir>/movies/movieReviewSnippets_GroundTruth.txt`, fetched, checked and extracted on first use
    (`folder`: where to write instead, e.g. a temporary sibling that is renamed to `movies` afterwards)."""
    final = Path(data_dir) / "movies"  # the folder the fetch command names
    folder = folder or final
    target = folder / Path(RATINGS).name
    if target.is_file():
        if _sha256(target.read_bytes()) != RATINGS_SHA256:
            raise DatasetFormatError(f"{target} is corrupt or truncated (SHA-256 differs); delete it to re-extract it")
        return target
    sdist = folder / SDIST
    folder.mkdir(parents=True, exist_ok=True)
    if not sdist.is_file():
        print(f"fetching {SDIST} (2.4 MB, the movie sentences' ratings) from PyPI into {final}", flush=True)
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        proc = subprocess.run(fetch_command(folder).split(), capture_output=True, text=True, env=env)
        if proc.returncode != 0 or not sdist.is_file():
            raise DatasetFormatError(
                f"cannot fetch {SDIST} from PyPI (offline?); where PyPI is reachable run: {fetch_command(final)}"
            )
    blob = sdist.read_bytes()
    if _sha256(blob) != SDIST_SHA256:
        raise DatasetFormatError(f"{sdist} is corrupt or truncated (SHA-256 differs); delete it and run again")
    try:
        with tarfile.open(fileobj=io.BytesIO(blob)) as outer:
            inner = outer.extractfile(INNER).read()  # type: ignore[union-attr]
        if _sha256(inner) != INNER_SHA256:
            raise DatasetFormatError(f"{sdist}: {INNER} differs from the pinned archive; delete {sdist} and run again")
        with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
            ratings = tar.extractfile(RATINGS).read()  # type: ignore[union-attr]
    except (tarfile.TarError, KeyError, AttributeError, EOFError, OSError) as e:
        raise DatasetFormatError(f"{sdist} cannot be read ({type(e).__name__}); delete it and run again") from None
    if _sha256(ratings) != RATINGS_SHA256:
        raise DatasetFormatError(f"{sdist}: {RATINGS} differs from the pinned file; delete {sdist} and run again")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(ratings)
    os.replace(tmp, target)
    return target


def load_sentences(data_dir: str | Path) -> list[tuple[str, float]]:
    """(sentence, mean rating) of every movie sentence, in the file's order."""
    path = ensure_ratings(data_dir)
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            _, mean, text = line.split("\t", 2)
            rows.append((text.strip(), float(mean)))
    return rows


def split(data_dir: str | Path, name: str, size: int | None = None, split_seed: int = 0) -> list[tuple[str, float]]:
    """The first `size` sentences of split `name` (train, holdout, test); neutral sentences dropped."""
    if name not in SPLITS:
        raise DatasetFormatError(f"unknown split {name!r} of the movie sentences; valid: {', '.join(SPLITS)}")
    seen: set[str] = set()  # two sentences appear twice (with different ratings): the first is kept
    rows = [r for r in load_sentences(data_dir) if r[1] != 0.0 and not (r[0] in seen or seen.add(r[0]))]
    order = np.random.default_rng(split_seed).permutation(len(rows))
    start, stop = SPLITS[name]
    picked = [rows[i] for i in order[start:stop]]
    return picked[:size] if size else picked


def rounded(x: float) -> int:
    """The mean rating rounded half away from zero (Python's round() rounds half to even)."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def write_ratings(root: Path) -> None:
    """The ratings file (and the sdist it came from) in `root`, a folder beside `<data_dir>/movies`."""
    ensure_ratings(root.parent, folder=root)


def write_instructions(root: Path, data_dir: Path | None = None) -> None:
    """train/holdout/test.json of {query, response} records (the MetaMathQA format) in `root`."""
    data_dir = data_dir or root.parent
    root.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        records = [
            {"query": f"{INSTRUCTION}\n{text}", "response": f"The answer is: {rounded(mean)}"}
            for text, mean in split(data_dir, name)
        ]
        (root / f"{name}.json").write_text(json.dumps(records, indent=0), encoding="utf-8")


class SentenceSet(Dataset):
    def __init__(self, rows: list[tuple[str, float]], tokenizer: Any, max_length: int) -> None:
        enc = tokenizer([t for t, _ in rows], truncation=True, max_length=max_length)
        self.ids = [torch.tensor(x) for x in enc["input_ids"]]
        self.labels = torch.tensor([int(m > 0) for _, m in rows])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids[i], self.labels[i]


def pad_batch(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({input_ids, attention_mask}, labels), right-padded with 0 (BERT's [PAD]) to the batch's longest."""
    ids = torch.nn.utils.rnn.pad_sequence([b[0] for b in batch], batch_first=True, padding_value=0)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(b[0]) for b in batch], batch_first=True)
    return {"input_ids": ids, "attention_mask": mask}, torch.stack([b[1] for b in batch])


class SentimentDataModule(L.LightningDataModule):
    """Positive vs negative movie sentences; validates on `eval_split` (test, or holdout for choosing the lr)."""

    def __init__(
        self,
        data_dir: str,
        tokenizer: str,
        eval_split: str = "test",
        train_size: int | None = None,
        eval_size: int | None = None,
        max_length: int = 64,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if eval_split not in ("test", "holdout"):
            raise DatasetFormatError(f"eval_split must be test or holdout, got {eval_split!r}")
        self.data_dir, self.tokenizer_source, self.eval_split = data_dir, tokenizer, eval_split
        self.train_size, self.eval_size, self.max_length = train_size, eval_size, max_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.seed, self.num_workers = seed, num_workers
        self.train_set: SentenceSet | None = None
        self.val_set: SentenceSet | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from transformers import AutoTokenizer

        from ..models.packaged import local_source

        tok = AutoTokenizer.from_pretrained(local_source(self.tokenizer_source))
        self.train_set = SentenceSet(split(self.data_dir, "train", self.train_size), tok, self.max_length)
        self.val_set = SentenceSet(split(self.data_dir, self.eval_split, self.eval_size), tok, self.max_length)

    def train_dataloader(self) -> DataLoader:
        return seeded_loader(self.train_set, self.batch_size, self.seed, self.num_workers, self.trainer, pad_batch)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.eval_batch_size, num_workers=self.num_workers, collate_fn=pad_batch)
