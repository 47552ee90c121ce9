"""The invariance suite: exact feature collisions (the null space of the first linear layer)."""

from .suite import InvarianceSuite

__all__ = ["InvarianceSuite"]
