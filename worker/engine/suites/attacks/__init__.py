"""Suite ``attacks``: adversarial robustness (SUITES.md section 2, parts 2a-2d and sanity flags)."""

from .suite import AttacksSuite

__all__ = ["AttacksSuite"]
