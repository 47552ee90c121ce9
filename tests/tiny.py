"""Tiny deterministic models and samples for tests (importable helpers, not fixtures)."""

from __future__ import annotations

import torch
from torch import nn

from worker.engine.card import ModelCard
from worker.engine.classifier import Classifier
from worker.engine.samples import SampleSet


class TinyNet(nn.Module):
    """Average-pool to 4x4, then a linear layer: a few hundred parameters, seeded weights."""

    def __init__(self, channels: int = 1, num_classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(channels * 16, num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(num_classes, channels * 16, generator=g))
            self.fc.bias.copy_(torch.randn(num_classes, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))


def tiny_card(channels: int = 1, size: int = 32, num_classes: int = 10, **extra: object) -> ModelCard:
    raw = {"format": "torchscript", "num_classes": num_classes, "input_size": [channels, size, size],
           "mean": [0.5] * channels, "std": [0.25] * channels, **extra}
    return ModelCard.from_dict(raw)


def tiny_classifier(channels: int = 1, size: int = 32, num_classes: int = 10, seed: int = 0) -> Classifier:
    return Classifier(TinyNet(channels, num_classes, seed), tiny_card(channels, size, num_classes),
                      sha256="0" * 64)


def random_samples(n: int = 24, channels: int = 1, size: int = 32, num_classes: int = 10,
                   seed: int = 0) -> SampleSet:
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(channels, size, size, generator=g) for _ in range(n)]
    labels = torch.arange(n) % num_classes
    return SampleSet(images=images, labels=labels, ids=[f"rand:{i}" for i in range(n)],
                     class_names=[str(i) for i in range(num_classes)], reference={"kind": "test"})
