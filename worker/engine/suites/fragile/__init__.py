"""Suite ``fragile``: fragile recognition images (docs/suites/fragile.md)."""

from .suite import FragileSuite

__all__ = ["FragileSuite"]
