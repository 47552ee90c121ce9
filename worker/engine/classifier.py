"""The wrapped model every suite talks to: [0, 1] images in, logits out."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .batching import BatchSize, initial_batch_size
from .card import ModelCard
from .errors import ModelOutputError


class Classifier(nn.Module):
    """A model with its normalisation inside, so that suites work in [0, 1] pixel space.

    Args:
        model: the loaded network (eval mode; parameters are frozen here).
        card: its model card.
        sha256: hex digest of the checkpoint file.
        device: where it runs.
        fixed_batch: set when the model only accepts this exact batch size (a torch.export
            program exported without a dynamic batch dimension); inputs are chunked and
            padded to it.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, card: ModelCard, *, sha256: str,
                 device: torch.device | str = "cpu", fixed_batch: int | None = None) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.card = card
        self.sha256 = sha256
        self.fixed_batch = fixed_batch
        c = card.channels
        self.register_buffer("mean", torch.tensor(card.mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(card.std, dtype=torch.float32).view(1, c, 1, 1))
        self.to(self.device)
        start = fixed_batch or initial_batch_size(card.input_size, self.device)
        self.batch = BatchSize(start)

    # -- facts for the report -------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.card.num_classes

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.card.input_size

    @property
    def dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            return p.dtype
        return torch.float32

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def describe(self) -> dict[str, Any]:
        """The report's ``model`` section; the preprocessing is the one used (a library may have filled it in)."""
        return {"sha256": self.sha256, "format": self.card.format.value, "arch": self.card.arch,
                "num_classes": self.num_classes, "params": self.num_params,
                "input_size": list(self.input_size), "mean": list(self.card.mean), "std": list(self.card.std),
                "preprocess": {"resize": self.card.preprocess.resize, "crop": self.card.preprocess.crop},
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""), "name": self.card.name}

    # -- running ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images in [0, 1]; differentiable with respect to ``x``."""
        z = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if self.fixed_batch is None or x.shape[0] == self.fixed_batch:
            return self.model(z)
        return self._forward_fixed(z)

    def _forward_fixed(self, z: torch.Tensor) -> torch.Tensor:
        b = self.fixed_batch
        assert b is not None
        outs = []
        for start in range(0, z.shape[0], b):
            chunk = z[start:start + b]
            n = chunk.shape[0]
            if n < b:
                chunk = torch.cat([chunk, chunk[-1:].expand(b - n, *chunk.shape[1:])])
            outs.append(self.model(chunk)[:n])
        return torch.cat(outs)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Logits of any number of images, batched automatically; on the model's device."""
        n = x.shape[0]

        def run(start: int, stop: int) -> torch.Tensor:
            out = self(x[start:stop].to(self.device, non_blocking=True))
            if check:
                self.check_output(out, stop - start)
            return out.float()

        parts = self.batch.map(run, n)
        if not parts:
            return torch.zeros(0, self.num_classes, device=self.device)
        return torch.cat(parts)

    def check_output(self, out: Any, n: int) -> None:
        """Raise :class:`ModelOutputError` unless ``out`` is finite N x num_classes logits."""
        if not isinstance(out, torch.Tensor):
            raise ModelOutputError(f"the model returned {type(out).__name__}, expected a tensor of logits "
                                   f"(N, {self.num_classes})")
        if tuple(out.shape) != (n, self.num_classes):
            raise ModelOutputError(f"the model output has shape {tuple(out.shape)}, expected "
                                   f"({n}, {self.num_classes}): check num_classes in the model card")
        if not torch.isfinite(out).all():
            raise ModelOutputError("the model output contains NaN or infinite values")
