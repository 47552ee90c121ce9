"""Tiny deterministic models and checkpoint writers for the model-loading tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.engine.card import ModelCard

NUM_CLASSES = 10
INPUT_SIZE = (3, 8, 8)
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


class TinyCNN(nn.Module):
    """A few hundred parameters: conv, pool, linear."""

    def __init__(self, channels: int = 3, num_classes: int = NUM_CLASSES, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(channels, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, num_classes)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class NaNModel(TinyCNN):
    """Runs, but every logit is NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))) * float("nan")


def card_dict(fmt: str, **overrides: Any) -> dict[str, Any]:
    """A valid card for the tiny model in format ``fmt``."""
    card: dict[str, Any] = {"format": fmt, "num_classes": NUM_CLASSES, "input_size": list(INPUT_SIZE),
                            "mean": list(MEAN), "std": list(STD), "name": "tiny"}
    card.update(overrides)
    return card


def write_card(checkpoint: Path, card: dict[str, Any]) -> Path:
    """Write ``card`` beside ``checkpoint`` where ``load_classifier`` looks by default."""
    path = checkpoint.with_name(checkpoint.name.split(".")[0] + ".card.json")
    path.write_text(json.dumps(card))
    return path


def save_torchscript(model: nn.Module, path: Path) -> Path:
    torch.jit.script(model).save(str(path))
    return path


def save_export(model: nn.Module, path: Path, *, dynamic_batch: bool, max_batch: int = 4096,
                input_size: tuple[int, int, int] = INPUT_SIZE) -> Path:
    """A torch.export program; with ``dynamic_batch=False`` it only accepts a batch of one."""
    if dynamic_batch:
        example = torch.rand(2, *input_size)
        dims = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
        program = torch.export.export(model, (example,), dynamic_shapes=dims)
    else:
        program = torch.export.export(model, (torch.rand(1, *input_size),))
    torch.export.save(program, path)
    return path


def normalised(x: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """What the Classifier feeds its model: (x - mean) / std."""
    mean = torch.tensor(card.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.std).view(1, -1, 1, 1)
    return (x - mean) / std


def images(n: int, input_size: tuple[int, int, int] = INPUT_SIZE, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *input_size, generator=torch.Generator().manual_seed(seed))


class Opaque:
    """A custom class: a weights-only unpickler must refuse it."""

    def __init__(self) -> None:
        self.value = 3
