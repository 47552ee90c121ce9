"""Per-sample random streams, so that a corrupted image does not depend on its batch or shard.

Each sample owns a seeded CPU :class:`torch.Generator`; draws are made per sample and stacked,
then moved to the images' device. The draws are small next to the image work, so a batch
still runs as one set of tensor operations.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch


def sample_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the audit seed and any labels (sample id, corruption, severity)."""
    text = "|".join(str(p) for p in parts).encode()
    return (seed * 2_654_435_761 + zlib.crc32(text) * 40_503 + zlib.adler32(text)) % (2**63)


class SampleRandom:
    """Random draws of shape (N, *shape): one independent, seeded stream per sample.

    Args:
        generators: one CPU generator per sample, in batch order.
        device: where the stacked draws are returned.
    """

    def __init__(self, generators: Sequence[torch.Generator], device: torch.device | str = "cpu") -> None:
        self.generators = list(generators)
        self.device = torch.device(device)

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], device: torch.device | str = "cpu") -> SampleRandom:
        gens = []
        for s in seeds:
            g = torch.Generator()
            g.manual_seed(int(s))
            gens.append(g)
        return cls(gens, device)

    def __len__(self) -> int:
        return len(self.generators)

    def _stack(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(parts).to(self.device)

    def uniform(self, shape: Sequence[int], low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """Uniform on [low, high)."""
        return self._stack([torch.rand(tuple(shape), generator=g) * (high - low) + low for g in self.generators])

    def normal(self, shape: Sequence[int], mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
        return self._stack([torch.randn(tuple(shape), generator=g) * std + mean for g in self.generators])

    def randint(self, low: int, high: int, shape: Sequence[int]) -> torch.Tensor:
        """Integers in [low, high)."""
        return self._stack([torch.randint(low, high, tuple(shape), generator=g) for g in self.generators])

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        """Poisson counts for per-sample rates (N, ...); drawn on the CPU per sample."""
        cpu = rates.detach().float().cpu()
        return self._stack([torch.poisson(cpu[i], generator=g) for i, g in enumerate(self.generators)])
