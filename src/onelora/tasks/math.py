"""Math reasoning (the paper's LLaMA-2 on MetaMathQA): causal-LM loss on response tokens, validation loss.

Training loss: the model's own (`labels` given, transformers shifts them; prompt and padding are -100),
the mean over the micro-batch's response tokens, as MoRA's HF Trainer computes it. Validation loss:
token-weighted over the whole validation split (sum of token losses / number of response tokens,
summed across processes), the run's metric `val_loss` (lower is better).

Dtypes ("bf16 weights, fp32 adapters"): at construction the frozen weights are cast to
`weights_dtype` (bf16) and everything that trains to `trainable_dtype` (fp32: the master copies
AdamW updates); run with `trainer.precision=bf16-mixed` (autocast), which keeps those storage dtypes,
unlike `bf16-true`, which would cast the adapters to bf16 as well.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from ..models.dtypes import apply_dtype_policy
from .base import PeftTask


class MathTask(PeftTask):
    def __init__(
        self,
        model: nn.Module,
        weights_dtype: str | None = "bfloat16",
        trainable_dtype: str | None = "float32",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("metric_name", "val_loss")
        kwargs.setdefault("metric_direction", "min")
        super().__init__(model, **kwargs)
        apply_dtype_policy(model, weights_dtype, trainable_dtype)
        if getattr(model, "config", None) is not None:
            model.config.use_cache = False  # as MoRA: no KV cache in training
        self.loss_sum = torchmetrics.SumMetric().set_dtype(torch.float64)
        self.token_count = torchmetrics.SumMetric().set_dtype(torch.float64)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        tok = getattr(dm, "tokenizer", None)
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
        if tok is not None and vocab is not None and len(tok) > vocab:
            from ..errors import ConfigError

            raise ConfigError(
                f"the tokenizer has {len(tok)} tokens but the model's embedding only {vocab}; "
                "use the model's own tokenizer (model.tokenizer=)"
            )

    def training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.loss

    def validation_update(self, batch: dict[str, Tensor]) -> Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = out.logits[:, :-1].float()
        labels = batch["labels"][:, 1:].clone()
        if self._keep is not None:  # a DistributedSampler's repeats: their tokens count nowhere
            labels[~self._keep.to(labels.device)] = -100
        total = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        count = (labels != -100).sum()
        self.loss_sum.update(total.detach().double())
        self.token_count.update(count.double())
        return total / count.clamp_min(1)

    def compute_metrics(self) -> dict[str, float]:
        total, count = float(self.loss_sum.compute()), float(self.token_count.compute())
        self.loss_sum.reset()
        self.token_count.reset()
        return {"val_loss": total / count if count else float("nan"), "val_tokens": count}
