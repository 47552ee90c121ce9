"""Suite ``attacks``: adversarial robustness (docs/suites/attacks.md, parts 2a-2d and sanity flags)."""

from .suite import AttacksSuite

__all__ = ["AttacksSuite"]
