"""Suite ``fragile``: fragile recognition images (SUITES.md section 1)."""

from .suite import FragileSuite

__all__ = ["FragileSuite"]
