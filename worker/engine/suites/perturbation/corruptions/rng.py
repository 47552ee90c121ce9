"""Per-sample random streams, so that a corrupted image does not depend on its batch or shard.

Each sample owns a seeded CPU :class:`torch.Generator`; draws are made per sample and stacked,
then moved to the images' device. The draws are small next to the image work, so a batch
still runs as one set of tensor operations. Large per-sample draws are spread over
``torch.get_num_threads()`` threads, one generator per task, so the numbers do not depend on
the thread count. Poisson counts are inverted from such uniforms on the images' device.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from .poisson import poisson_from_uniforms

#: per-sample draws of at least this many values are made on several threads.
THREADED_DRAW_MIN = 1 << 16


def _each(count: int, size: int, task: Callable[[int], object]) -> None:
    """task(i) for i in range(count), on torch's thread count when each task is large enough."""
    workers = min(torch.get_num_threads(), count)
    if workers <= 1 or size < THREADED_DRAW_MIN:
        for i in range(count):
            task(i)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(task, range(count)))


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

    def _draw(self, shape: Sequence[int], fill: Callable[[torch.Tensor, torch.Generator], object],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, *shape) draws: each sample's generator fills its own row of one CPU tensor, in place."""
        out = torch.empty((len(self.generators), *shape), dtype=dtype)
        _each(len(self.generators), out[0].numel() if len(out) else 0,
              lambda i: fill(out[i], self.generators[i]))
        return out

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)

    def uniform(self, shape: Sequence[int], low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """Uniform on [low, high)."""
        out = self._draw(shape, lambda row, g: torch.rand(row.shape, generator=g, out=row))
        if (low, high) != (0.0, 1.0):
            out.mul_(high - low).add_(low)
        return self._to_device(out)

    def normal(self, shape: Sequence[int], mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
        out = self._draw(shape, lambda row, g: torch.randn(row.shape, generator=g, out=row))
        if (mean, std) != (0.0, 1.0):
            out.mul_(std).add_(mean)
        return self._to_device(out)

    def randint(self, low: int, high: int, shape: Sequence[int]) -> torch.Tensor:
        """Integers in [low, high)."""
        out = self._draw(shape, lambda row, g: torch.randint(low, high, row.shape, generator=g, out=row),
                         dtype=torch.int64)
        return self._to_device(out)

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        """Poisson counts (float32) for per-sample rates (N, ...) in [0, 255], on the rates' device.

        Each sample's stream gives two float64 uniforms per value (all for the whole parts of
        the rates, then all for their fractions), inverted exactly on the device: see
        :mod:`.poisson`. The counts depend on the stream only, not on the batch or device.
        """
        shape = rates.shape[1:]
        u_whole = self._draw(shape, lambda row, g: torch.rand(row.shape, generator=g, out=row,
                                                              dtype=torch.float64), dtype=torch.float64)
        u_frac = self._draw(shape, lambda row, g: torch.rand(row.shape, generator=g, out=row,
                                                             dtype=torch.float64), dtype=torch.float64)
        return poisson_from_uniforms(rates, u_whole, u_frac).float()
