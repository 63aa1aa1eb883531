"""Image classification (the paper's ViT-B on CIFAR-10/100): cross-entropy, top-1 accuracy.

Text works the same way (task=sentiment): a batch is ({input_ids, attention_mask}, labels).

Also reported, for the paper's Figure 11: the expected calibration error (`ece`, 15 equal-width bins, top-1
confidence) and, after fitting, `predictions.pt` in the run directory with every validation sample's
confidence, correctness and cross-entropy from the last validation (`scripts/calibration.py` plots them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from .base import PeftTask


class ClassificationTask(PeftTask):
    def __init__(self, model: Any, num_classes: int, ece_bins: int = 15, **kwargs: Any) -> None:
        kwargs.setdefault("metric_name", "accuracy")
        kwargs.setdefault("metric_direction", "max")
        super().__init__(model, **kwargs)
        self.accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.ece = torchmetrics.CalibrationError(task="multiclass", num_classes=num_classes, n_bins=ece_bins)
        self.samples: list[Tensor] = []  # per batch: (confidence, correct, loss) of each validation sample

    def logits(self, inputs: Tensor | dict[str, Tensor]) -> Tensor:
        out = self.model(**inputs) if isinstance(inputs, dict) else self.model(inputs)  # text: ids and mask
        return getattr(out, "logits", out)  # transformers returns an output object, timm a tensor

    def training_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        images, labels = batch
        return F.cross_entropy(self.logits(images), labels)

    def validation_update(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        images, labels = batch
        logits, labels = self.kept(self.logits(images).float()), self.kept(labels)  # each sample once under DDP
        self.accuracy.update(logits, labels)
        self.ece.update(logits.softmax(-1), labels)
        losses = F.cross_entropy(logits, labels, reduction="none")
        confidence, predicted = logits.softmax(-1).max(-1)
        self.samples.append(torch.stack([confidence, (predicted == labels).float(), losses], 1).detach().cpu())
        return losses.mean()

    def compute_metrics(self) -> dict[str, float]:
        out = {"accuracy": float(self.accuracy.compute()), "ece": float(self.ece.compute())}
        self.accuracy.reset()
        self.ece.reset()
        self.last_samples, self.samples = self.samples, []
        return out

    def on_fit_end(self) -> None:
        """Per-sample results of the last validation, for calibration plots (rank 0 of a single process)."""
        samples = getattr(self, "last_samples", None)
        if samples and self.trainer.is_global_zero and self.trainer.world_size == 1:
            table = torch.cat(samples)
            path = Path(self.trainer.default_root_dir) / "predictions.pt"
            torch.save({"confidence": table[:, 0], "correct": table[:, 1], "loss": table[:, 2]}, path)
