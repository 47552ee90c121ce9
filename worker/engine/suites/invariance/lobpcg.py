"""The few smallest eigenpairs of a symmetric positive semi-definite operator given as a function.

``torch.lobpcg`` wants the matrix itself; W^T W of a convolution on a large image is only
available as a product (a convolution and its adjoint), so this is the plain LOBPCG of Knyazev
(2001) without a preconditioner: Rayleigh-Ritz on the span of the current vectors, their
residuals and the previous step, orthonormalised by QR each iteration. Rows are vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Operator = Callable[[torch.Tensor], torch.Tensor]  # (m, n) -> (m, n), row by row


@dataclass(frozen=True)
class Eigenpairs:
    """``values`` ascending (k,), ``vectors`` (k, n) orthonormal rows, and whether every residual
    fell below the tolerance within the iterations."""

    values: torch.Tensor
    vectors: torch.Tensor
    converged: bool
    iterations: int


def _orthonormal_rows(s: torch.Tensor) -> torch.Tensor:
    q, _ = torch.linalg.qr(s.T, mode="reduced")
    return q.T


def _ritz(basis: torch.Tensor, image: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k smallest Ritz values of the operator on the span of ``basis`` (orthonormal rows), the
    Ritz vectors and their images."""
    t = basis @ image.T
    values, coef = torch.linalg.eigh((t + t.T) / 2)
    c = coef[:, :k].T
    return values[:k], c @ basis, c @ image


def largest_eigenvalue(op: Operator, n: int, *, iterations: int, generator: torch.Generator,
                       device: torch.device) -> float:
    """The largest eigenvalue by power iteration (a Rayleigh quotient: never above the true one)."""
    v = torch.randn(1, n, generator=generator, dtype=torch.float64).to(device)
    v = v / v.norm()
    value = 0.0
    for _ in range(iterations):
        w = op(v)
        value = float((w * v).sum())
        norm = w.norm()
        if norm == 0:
            return 0.0
        v = w / norm
    return value


def smallest_eigenpairs(op: Operator, n: int, k: int, *, iterations: int, tol: float, rel: float,
                        generator: torch.Generator, device: torch.device) -> Eigenpairs:
    """The ``k`` smallest eigenpairs of ``op`` (symmetric, PSD, on R^n); stops when every residual
    norm is at most ``tol + rel * value`` (the error of a Ritz value is at most its residual)."""
    k = min(k, n)
    x = _orthonormal_rows(torch.randn(k, n, generator=generator, dtype=torch.float64).to(device))
    values, x, ax = _ritz(x, op(x), k)
    p: torch.Tensor | None = None
    done = 0
    for done in range(1, iterations + 1):
        r = ax - values[:, None] * x
        if bool((r.norm(dim=1) <= tol + rel * values.abs()).all()):
            return Eigenpairs(values, x, True, done)
        blocks = [x, r] if p is None else [x, r, p]
        basis = _orthonormal_rows(torch.cat(blocks))
        new_values, new_x, new_ax = _ritz(basis, op(basis), k)
        p = new_x - (new_x @ x.T) @ x  # the step, orthogonal to the old vectors
        values, x, ax = new_values, new_x, new_ax
    r = ax - values[:, None] * x
    return Eigenpairs(values, x, bool((r.norm(dim=1) <= tol + rel * values.abs()).all()), done)
