"""The suite registry: a name -> class mapping; each suite module registers itself here."""

from __future__ import annotations

from .attacks import AttacksSuite
from .base import Suite, SuiteContext, SuiteResult, SuiteStatus
from .clean import CleanSuite
from .fragile import FragileSuite
from .invariance import InvarianceSuite
from .perturbation.suite import PerturbationSuite
from .shift import ShiftSuite

SUITES: dict[str, type[Suite]] = {
    CleanSuite.name: CleanSuite,
    FragileSuite.name: FragileSuite,
    AttacksSuite.name: AttacksSuite,
    PerturbationSuite.name: PerturbationSuite,
    ShiftSuite.name: ShiftSuite,
    InvarianceSuite.name: InvarianceSuite,
}


def get_suite(name: str) -> Suite:
    """An instance of the named suite; unknown names are a SpecError listing the known ones."""
    from ..errors import SpecError

    cls = SUITES.get(name)
    if cls is None:
        raise SpecError(f"unknown suite {name!r}; available: {sorted(SUITES)}", suite=name)
    return cls()


__all__ = ["SUITES", "Suite", "SuiteContext", "SuiteResult", "SuiteStatus", "get_suite"]
