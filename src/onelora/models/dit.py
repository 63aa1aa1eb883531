"""DiT in `diffusers`: one shared class table and timestep MLP, as the original DiT has.

`diffusers`' `DiTTransformer2DModel` gives every transformer block its own
`norm1.emb` (a `CombinedTimestepLabelEmbeddings`: the timestep MLP and the class table),
and the converted `facebook/DiT-XL-2-256` weights are 28 identical copies of the original
model's single `t_embedder` and `y_embedder`. Fine-tuning those copies independently
would train 28 class tables (28 × 102 × 1152 parameters for Food-101) and make the counts
depend on a conversion artefact. `share_dit_embeddings` makes every block use block 0's
module object, so the model has one class table and one timestep MLP again: `named_parameters()`
lists them once (under `transformer_blocks.0.norm1.emb`), every method trains one table, and
a method that adapts the timestep MLP adapts it once. The outputs are unchanged for the
converted weights (the copies are equal); for a randomly initialised model block 0's copy wins.

It also resizes the class table to `num_classes` + 1 rows (the last row is the null class of
classifier-free guidance): new class rows are drawn from N(0, 0.02) as DiT initialises its table,
and the pretrained null row is copied into the new null row (`keep_null`), so the fine-tuned
model starts from the pre-trained unconditional prediction that guidance subtracts.

Configured as the model's `post_build` hook (see `configs/model/dit_xl_2_256.yaml`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def _shared_emb(model: nn.Module) -> nn.Module:
    blocks = getattr(model, "transformer_blocks", None)
    emb = getattr(getattr(blocks[0], "norm1", None), "emb", None) if blocks else None
    if emb is None or not hasattr(emb, "class_embedder"):
        raise TypeError(f"{type(model).__name__} is not a class-conditional DiT (no transformer_blocks[0].norm1.emb)")
    return emb


def class_embedder(model: nn.Module) -> nn.Module:
    """The (shared) `LabelEmbedding` of a DiT: `.embedding_table` has num_classes + 1 rows, `.num_classes` is null."""
    return _shared_emb(model).class_embedder


@torch.no_grad()
def resize_class_table(model: nn.Module, num_classes: int, init_std: float = 0.02, keep_null: bool = True) -> None:
    """Give block 0's class table `num_classes` + 1 rows (fresh N(0, init_std) classes, null row last)."""
    emb = class_embedder(model)
    old = emb.embedding_table
    rows = num_classes + 1
    new = nn.Embedding(rows, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
    nn.init.normal_(new.weight, std=init_std)
    if keep_null and old.num_embeddings > emb.num_classes:  # the pretrained table has a null row
        new.weight[num_classes] = old.weight[emb.num_classes]
    new.weight.requires_grad_(old.weight.requires_grad)
    emb.embedding_table, emb.num_classes = new, num_classes
    if hasattr(model, "register_to_config"):  # diffusers: save_pretrained/from_pretrained round-trip the new size
        model.register_to_config(num_embeds_ada_norm=num_classes)


def share_dit_embeddings(
    model: nn.Module, num_classes: int | None = None, init_std: float = 0.02, keep_null: bool = True
) -> nn.Module:
    """Tie every block's `norm1.emb` to block 0's and resize the class table to `num_classes` (+ null); in place.

    num_classes: the target data set's classes (Food-101: 101); None or the current count keeps the table.
    Returns the model (whose `save_pretrained` unties the copies while it writes, since safetensors
    refuses shared tensors, so an exported model loads into a plain `DiTTransformer2DModel`).
    """
    emb = _shared_emb(model)
    for block in model.transformer_blocks[1:]:
        block.norm1.emb = emb
    if num_classes is not None and num_classes != emb.class_embedder.num_classes:
        resize_class_table(model, int(num_classes), init_std=init_std, keep_null=keep_null)
    if hasattr(model, "save_pretrained") and not isinstance(model.__dict__.get("save_pretrained"), UntiedSave):
        model.save_pretrained = UntiedSave(model)  # this instance only
    return model


def embeddings_shared(model: nn.Module) -> bool:
    """True if every block of the DiT uses block 0's timestep/class embedding module."""
    emb = _shared_emb(model)
    return all(block.norm1.emb is emb for block in model.transformer_blocks)


@contextmanager
def untied(model: nn.Module) -> Iterator[None]:
    """Give blocks 1.. their own copies of the shared embedding for the duration (e.g. saving), then re-tie."""
    emb = _shared_emb(model)
    tied = [b for b in model.transformer_blocks[1:] if b.norm1.emb is emb]
    for block in tied:
        block.norm1.emb = copy.deepcopy(emb)
    try:
        yield
    finally:
        for block in tied:
            block.norm1.emb = emb


class UntiedSave:
    """`model.save_pretrained` of a shared DiT: the class's own, run with the embeddings untied (picklable)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with untied(self.model):
            return type(self.model).save_pretrained(self.model, *args, **kwargs)
