"""Suite ``shift``: accuracy under dataset shift, controlled for uncertainty (docs/suites/shift.md)."""

from .suite import ShiftSuite

__all__ = ["ShiftSuite"]
