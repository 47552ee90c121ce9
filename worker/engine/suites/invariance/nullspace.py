"""The null space of the first linear operator W, and the projection onto it.

Four ways, the first that applies (``method: auto``):

- ``exact_patches``: a convolution whose patches do not overlap (stride = kernel, no padding,
  no dilation) is one matrix M (C_out x C_in·kh·kw) applied to every patch, so W is block
  diagonal: its singular values are M's, each once per patch, and null(W) is null(M) in every
  patch plus every pixel no patch reads (the rows and columns left over when the side is not a
  multiple of the kernel). One SVD of M.
- ``exact_matrix``: a Linear layer on the flattened input is the matrix itself: one SVD.
- ``dense``: any other W on at most :data:`DENSE_MAX_INPUTS` input values: WᵀW is formed
  column by column (W and its adjoint on the identity) and diagonalised (``eigh``).
- ``iterative``: larger inputs: the ``k`` smallest eigenvalues of WᵀW by LOBPCG on the operator
  (a convolution and its adjoint per product), the largest by power iteration. The dimension
  found is then a lower bound when all ``k`` values are zero.

A singular value counts as zero when it is at most ``rtol`` times the largest. Everything is
float64 on the model's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch

from .lobpcg import largest_eigenvalue, smallest_eigenpairs
from .operator import FirstOperator, OperatorKind

#: the dense path forms a D x D matrix: at most this many input values (32 MiB at 2048, 128 MiB here)
DENSE_MAX_INPUTS = 4096
#: an exact SVD (of a Linear weight, or of a patch embedding's per-patch matrix) is used up to this
#: many multiply-adds (min² x max of its sides); a larger one goes the iterative way
MATRIX_MAX_WORK = 2e11
#: the iterative way keeps about 3k vectors of the input's size (float64): k shrinks to fit this
ITERATIVE_MAX_BYTES = 2 * 2**30
#: singular values kept for the report's spectrum plot (evenly spaced ranks, the last always in)
SPECTRUM_POINTS = 256
#: identity columns pushed through W at once on the dense path
DENSE_CHUNK = 256
#: power iterations for the largest singular value on the iterative path
POWER_ITERATIONS = 50


class Method(StrEnum):
    """What the request asks for."""

    AUTO = "auto"
    DENSE = "dense"
    ITERATIVE = "iterative"


class Way(StrEnum):
    """What was computed."""

    PATCHES = "exact_patches"
    MATRIX = "exact_matrix"
    DENSE = "dense"
    ITERATIVE = "iterative"


@dataclass
class Projector:
    """The orthogonal projection onto null(W) in W's input layout, from an orthonormal basis.

    ``rows`` span null(W) (``span``) or its orthogonal complement, the row space (``complement``);
    for ``patches`` they are the row space of the per-patch matrix, applied patch by patch over the
    ``covered`` top-left block (the pixels outside it are free).
    """

    kind: str
    rows: torch.Tensor
    kernel: tuple[int, int] = (1, 1)
    covered: tuple[int, int] = (0, 0)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """Project a batch ``(B, *in_shape)``."""
        if self.kind == "span":
            flat = u.reshape(u.shape[0], -1)
            return ((flat @ self.rows.T) @ self.rows).reshape(u.shape)
        if self.kind == "complement":
            flat = u.reshape(u.shape[0], -1)
            return (flat - (flat @ self.rows.T) @ self.rows).reshape(u.shape)
        b, c = u.shape[:2]
        (kh, kw), (hc, wc) = self.kernel, self.covered
        out = u.clone()
        block = u[:, :, :hc, :wc].reshape(b, c, hc // kh, kh, wc // kw, kw).permute(0, 2, 4, 1, 3, 5)
        patches = block.reshape(b, -1, c * kh * kw)
        patches = patches - (patches @ self.rows.T) @ self.rows
        back = patches.reshape(b, hc // kh, wc // kw, c, kh, kw).permute(0, 3, 1, 4, 2, 5)
        out[:, :, :hc, :wc] = back.reshape(b, c, hc, wc)
        return out


@dataclass
class NullSpace:
    """null(W): its dimension, W's singular values around it, and the projection onto it.

    Args:
        way: how it was computed.
        dimension: singular values at most ``rtol`` times the largest (with the input values no
            patch reads); a lower bound when ``lower_bound``.
        smallest: W's smallest singular value (0 when the dimension is above 0).
        smallest_nonzero: the smallest one above the tolerance (None when not computed).
        largest: W's largest singular value.
        rtol: the relative tolerance.
        spectrum: singular values, descending, at evenly spaced ranks of ``spectrum_length``.
        spectrum_length: how many singular values the spectrum samples (per patch on ``exact_patches``).
        lower_bound: the iterative path found only zeros among its ``k`` values.
        converged: the iterative path met its tolerance.
        projector: the projection onto null(W) (None when the dimension is 0).
    """

    way: Way
    dimension: int
    smallest: float
    smallest_nonzero: float | None
    largest: float
    rtol: float
    spectrum: list[float]
    spectrum_length: int
    lower_bound: bool = False
    converged: bool = True
    projector: Projector | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"way": self.way.value, "dimension": self.dimension, "smallest": self.smallest,
                "smallest_nonzero": self.smallest_nonzero, "largest": self.largest, "rtol": self.rtol,
                "spectrum": self.spectrum, "spectrum_length": self.spectrum_length,
                "lower_bound": self.lower_bound, "converged": self.converged}


def sampled_spectrum(values: list[float], length: int) -> list[float]:
    """``length`` singular values (``values`` descending, then zeros) at evenly spaced ranks."""
    if length <= 0:
        return []
    m = min(length, SPECTRUM_POINTS)
    ranks = sorted({round(i * (length - 1) / max(1, m - 1)) for i in range(m)})
    return [float(values[r]) if r < len(values) else 0.0 for r in ranks]


def _cut(values: torch.Tensor, rtol: float) -> tuple[float, int]:
    """(largest, how many are above the tolerance) of non-negative ``values``."""
    top = float(values.max()) if values.numel() else 0.0
    return top, int((values > rtol * top).sum()) if top > 0 else 0


def patch_matrix(op: FirstOperator) -> torch.Tensor:
    """M, the C_out x C_in·kh·kw matrix a non-overlapping convolution applies to each patch
    (columns in the (channel, row, column) order of a patch flattened; zeros across groups)."""
    w = op.weight
    c_out, c_in_g, kh, kw = w.shape
    g = op.groups
    m = torch.zeros(c_out, c_in_g * g, kh, kw, dtype=w.dtype, device=w.device)
    out_g = c_out // g
    for i in range(g):
        m[i * out_g:(i + 1) * out_g, i * c_in_g:(i + 1) * c_in_g] = w[i * out_g:(i + 1) * out_g]
    return m.reshape(c_out, -1)


def exact_patches(op: FirstOperator, rtol: float) -> NullSpace:
    c, h, w = op.in_shape
    kh, kw = op.kernel
    m = patch_matrix(op)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    top, rank = _cut(s, rtol)
    width = m.shape[1]
    hc, wc = (h // kh) * kh, (w // kw) * kw
    free = c * (h * w - hc * wc)
    dimension = (hc // kh) * (wc // kw) * (width - rank) + free
    values = s.tolist()
    above = [v for v in values if v > rtol * top]
    return NullSpace(Way.PATCHES, dimension, 0.0 if dimension else float(s.min()),
                     min(above) if above else None, top, rtol, sampled_spectrum(values, width), width,
                     projector=Projector("patches", vh[:rank], (kh, kw), (hc, wc)) if dimension else None)


def exact_matrix(op: FirstOperator, rtol: float) -> NullSpace:
    w = op.weight
    _, s, vh = torch.linalg.svd(w, full_matrices=False)
    top, rank = _cut(s, rtol)
    d = w.shape[1]
    dimension = d - rank
    values = s.tolist()
    above = [v for v in values if v > rtol * top]
    return NullSpace(Way.MATRIX, dimension, 0.0 if dimension else float(s.min()), min(above) if above else None,
                     top, rtol, sampled_spectrum(values, d), d,
                     projector=Projector("complement", vh[:rank]) if dimension else None)


def gram_matrix(op: FirstOperator) -> torch.Tensor:
    """WᵀW as a D x D matrix, DENSE_CHUNK identity columns at a time."""
    d = op.in_numel
    g = torch.empty(d, d, dtype=torch.float64, device=op.weight.device)
    for start in range(0, d, DENSE_CHUNK):
        stop = min(d, start + DENSE_CHUNK)
        eye = torch.zeros(stop - start, d, dtype=torch.float64, device=op.weight.device)
        eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        g[start:stop] = op.gram(eye.reshape(-1, *op.in_shape)).reshape(stop - start, d)
    return (g + g.T) / 2


def dense(op: FirstOperator, rtol: float) -> NullSpace:
    gram = gram_matrix(op)
    s = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().flip(0)  # descending; vectors only when needed
    top, rank = _cut(s, rtol)
    d = s.numel()
    dimension = d - rank
    values = s.tolist()
    above = [v for v in values if v > rtol * top]
    projector = None
    if dimension:
        vec = torch.linalg.eigh(gram)[1].flip(1)
        projector = (Projector("span", vec[:, rank:].T.contiguous()) if dimension <= rank
                     else Projector("complement", vec[:, :rank].T.contiguous()))
    return NullSpace(Way.DENSE, dimension, 0.0 if dimension else float(s[-1]), min(above) if above else None,
                     top, rtol, sampled_spectrum(values, d), d, projector=projector)


def iterative(op: FirstOperator, rtol: float, *, k: int, iterations: int, generator: torch.Generator) -> NullSpace:
    d = op.in_numel
    device = op.weight.device
    k = max(1, min(k, ITERATIVE_MAX_BYTES // (3 * 8 * d)))

    def gram(rows: torch.Tensor) -> torch.Tensor:
        return op.gram(rows.reshape(-1, *op.in_shape)).reshape(rows.shape[0], d)

    top_sq = largest_eigenvalue(gram, d, iterations=POWER_ITERATIONS, generator=generator, device=device)
    top = math.sqrt(max(top_sq, 0.0))
    # zero within rtol is an eigenvalue below (rtol·σmax)²: a residual must be far below that, or far
    # below its own value (a Ritz value is never below the true one and errs by at most its residual)
    pairs = smallest_eigenpairs(gram, d, k, iterations=iterations, tol=1e-3 * (rtol * top) ** 2 + 1e-13 * top_sq,
                                rel=1e-6, generator=generator, device=device)
    s = pairs.values.clamp(min=0).sqrt()  # ascending
    zero = s <= rtol * top
    dimension = int(zero.sum())
    above = s[~zero]
    values = [top] + sorted(s.tolist(), reverse=True)
    return NullSpace(Way.ITERATIVE, dimension, 0.0 if dimension else float(s.min()),
                     float(above.min()) if above.numel() else None, top, rtol, values, len(values),
                     lower_bound=dimension == s.numel(), converged=pairs.converged,
                     projector=Projector("span", pairs.vectors[zero].contiguous()) if dimension else None)


def _small(rows: int, cols: int) -> bool:
    return min(rows, cols) ** 2 * max(rows, cols) <= MATRIX_MAX_WORK


def null_space(op: FirstOperator, method: Method, rtol: float, *, k: int, iterations: int,
               generator: torch.Generator) -> NullSpace:
    """null(W) by the first way that applies (see the module's docstring)."""
    if method is Method.AUTO:
        if op.non_overlapping and _small(op.weight.shape[0], op.weight[0].numel() * op.groups):
            return exact_patches(op, rtol)
        if op.kind is OperatorKind.LINEAR and _small(*op.weight.shape):
            return exact_matrix(op, rtol)
        if op.in_numel <= DENSE_MAX_INPUTS:
            return dense(op, rtol)
    if method is Method.DENSE and op.in_numel <= DENSE_MAX_INPUTS:
        return dense(op, rtol)
    return iterative(op, rtol, k=k, iterations=iterations, generator=generator)
