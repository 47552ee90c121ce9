"""Batch size chosen automatically, halved when CUDA runs out of memory."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch

from .errors import AuditError

T = TypeVar("T")

# Elements (N*C*H*W) of one input batch we start from; the model's activations are many
# times larger, so this is deliberately modest and OOM-halving fixes the rest.
_START_ELEMENTS = {"cpu": 8_000_000, "cuda": 64_000_000}
_MAX_BATCH = {"cpu": 1024, "cuda": 8192}


def initial_batch_size(input_size: tuple[int, int, int], device: torch.device) -> int:
    """A power of two sized to the input; CUDA starts higher and halves on OOM."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    per_sample = max(1, input_size[0] * input_size[1] * input_size[2])
    n = max(1, _START_ELEMENTS[kind] // per_sample)
    return int(min(_MAX_BATCH[kind], 2 ** int(math.log2(n))))


class BatchSize:
    """A mutable batch size shared by everything that feeds one model.

    Args:
        size: starting size; only ever goes down (on out-of-memory).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("batch size must be >= 1")
        self.size = size

    def map(self, fn: Callable[[int, int], T], n: int) -> list[T]:
        """Call ``fn(start, stop)`` over ``range(n)`` in chunks; halve and retry a chunk on OOM."""
        out: list[T] = []
        start = 0
        while start < n:
            stop = min(n, start + self.size)
            try:
                out.append(fn(start, stop))
            except torch.cuda.OutOfMemoryError:
                if self.size == 1:
                    raise AuditError("out of GPU memory with a batch of one sample") from None
                torch.cuda.empty_cache()
                self.size = max(1, self.size // 2)
                continue
            start = stop
        return out
