"""Image classification (the paper's ViT-B on CIFAR-10/100): cross-entropy, top-1 accuracy."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from .base import PeftTask


class ClassificationTask(PeftTask):
    def __init__(self, model: Any, num_classes: int, **kwargs: Any) -> None:
        kwargs.setdefault("metric_name", "accuracy")
        kwargs.setdefault("metric_direction", "max")
        super().__init__(model, **kwargs)
        self.accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def logits(self, images: Tensor) -> Tensor:
        out = self.model(images)
        return getattr(out, "logits", out)  # transformers returns an output object, timm a tensor

    def training_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        images, labels = batch
        return F.cross_entropy(self.logits(images), labels)

    def validation_update(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        images, labels = batch
        logits = self.logits(images)
        self.accuracy.update(logits, labels)
        return F.cross_entropy(logits, labels)

    def compute_metrics(self) -> dict[str, float]:
        acc = float(self.accuracy.compute())
        self.accuracy.reset()
        return {"accuracy": acc}
