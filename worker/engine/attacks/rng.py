"""Per-sample random streams, so a sample's random start does not depend on its batch.

Sharded and unsharded audits must agree exactly; a generator shared by a batch would give a
sample different noise depending on which samples came before it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def sample_seed(*parts: object) -> int:
    """A stable 62-bit seed from any parts (audit seed, suite, sample id, salt)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 62) - 1)


class SampleSeeds:
    """One seed per sample; subsets and salts derive new streams deterministically.

    Args:
        seeds: one integer per sample.
    """

    def __init__(self, seeds: Sequence[int] | torch.Tensor) -> None:
        self.seeds = torch.as_tensor(seeds, dtype=torch.long).cpu()

    def __len__(self) -> int:
        return int(self.seeds.numel())

    def subset(self, idx: torch.Tensor) -> SampleSeeds:
        return SampleSeeds(self.seeds[idx.cpu()])

    def salted(self, salt: int) -> SampleSeeds:
        return SampleSeeds([sample_seed(int(s), salt) for s in self.seeds])

    def rand(self, shape: Sequence[int], *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.stack([torch.rand(*shape[1:], generator=torch.Generator().manual_seed(int(s)), dtype=dtype)
                            for s in self.seeds]) if len(self) else torch.zeros(*shape, dtype=dtype)

    def randn(self, shape: Sequence[int], *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.stack([torch.randn(*shape[1:], generator=torch.Generator().manual_seed(int(s)), dtype=dtype)
                            for s in self.seeds]) if len(self) else torch.zeros(*shape, dtype=dtype)


RandomSource = SampleSeeds | torch.Generator | None


def uniform(shape: Sequence[int], source: RandomSource, dtype: torch.dtype) -> torch.Tensor:
    """U[0, 1) noise of ``shape`` (first dimension = samples) from ``source``."""
    if isinstance(source, SampleSeeds):
        return source.rand(shape, dtype=dtype)
    return torch.rand(*shape, generator=source, dtype=dtype)


def normal(shape: Sequence[int], source: RandomSource, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise of ``shape`` from ``source``."""
    if isinstance(source, SampleSeeds):
        return source.randn(shape, dtype=dtype)
    return torch.randn(*shape, generator=source, dtype=dtype)


def subset(source: RandomSource, idx: torch.Tensor) -> RandomSource:
    """The streams of the samples at ``idx`` (a shared generator is kept as is)."""
    return source.subset(idx) if isinstance(source, SampleSeeds) else source


def salted(source: RandomSource, salt: int) -> RandomSource:
    """Fresh streams for a restart or budget (a shared generator simply continues)."""
    return source.salted(salt) if isinstance(source, SampleSeeds) else source
