"""Per-tenant limits, as configured: what one tenant may hold at once, so that it cannot block
the others. (No store access here: the configuration imports this; the checks are in
:mod:`service.tenants`.)

Configured by ``ROBUSTAUDIT_TENANT_LIMITS``, a JSON object: ``"*"`` holds the defaults of every
tenant, any other key a tenant's own values (the fields it leaves out keep the defaults)::

    {"*": {"max_active_audits": 50}, "ci-team": {"max_active_audits": 200, "max_schedules": 40}}

The fields a tenant's object may hold are those of :class:`TenantLimits`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

#: the name of the limits variable (its own module so the config can say it in errors)
ENV_NAME = "ROBUSTAUDIT_TENANT_LIMITS"
DEFAULTS_KEY = "*"


@dataclass(frozen=True)
class TenantLimits:
    """The limits of one tenant.

    Args:
        max_active_audits: audits queued and running at once.
        max_upload_checks: uploads being checked in the sandbox (or waiting for a check) at once.
        max_schedules: enabled schedules.
        min_schedule_interval_s: the shortest time between two runs of one schedule.
        max_cost: the cost ceiling of one audit, in the cost model's units. Reserved: it is read
            and stored here, and checked once the cost model (issue 18) is merged; until then no
            audit is refused for its cost.
    """

    max_active_audits: int = 100
    max_upload_checks: int = 1
    max_schedules: int = 20
    min_schedule_interval_s: float = 3600.0
    max_cost: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_INT_FIELDS = ("max_active_audits", "max_upload_checks", "max_schedules")
_FLOAT_FIELDS = ("min_schedule_interval_s", "max_cost")


class TenantLimitsError(ValueError):
    """``ROBUSTAUDIT_TENANT_LIMITS`` cannot be used; the message says why."""


def _limits(raw: Any, base: TenantLimits, where: str) -> TenantLimits:
    if not isinstance(raw, dict):
        raise TenantLimitsError(f"{ENV_NAME}: {where} must be an object of limits")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _INT_FIELDS + _FLOAT_FIELDS:
            raise TenantLimitsError(f"{ENV_NAME}: {where} has an unknown limit {key!r}; "
                                    f"known: {list(_INT_FIELDS + _FLOAT_FIELDS)}")
        if key == "max_cost" and value is None:
            values[key] = None
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or value < 0 or (key in _INT_FIELDS and (not float(value).is_integer() or value < 1)):
            kind = "a positive integer" if key in _INT_FIELDS else "a number >= 0"
            raise TenantLimitsError(f"{ENV_NAME}: {where}.{key} must be {kind}, got {value!r}")
        values[key] = int(value) if key in _INT_FIELDS else float(value)
    return replace(base, **values)


@dataclass(frozen=True)
class LimitsTable:
    """The defaults and each configured tenant's own limits.

    Args:
        default: the limits of every tenant not named in ``tenants``.
        tenants: tenant -> its limits (the defaults with its own values on top).
    """

    default: TenantLimits = TenantLimits()
    tenants: Mapping[str, TenantLimits] = field(default_factory=dict)

    def of(self, tenant: str) -> TenantLimits:
        return self.tenants.get(tenant, self.default)

    @classmethod
    def parse(cls, text: str | None) -> LimitsTable:
        """The table from the variable's JSON text (empty: the built-in defaults)."""
        if not text or not text.strip():
            return cls()
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise TenantLimitsError(f"{ENV_NAME} is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise TenantLimitsError(f"{ENV_NAME} must be a JSON object: {{\"*\": {{...}}, \"tenant\": {{...}}}}")
        default = _limits(raw.get(DEFAULTS_KEY, {}), TenantLimits(), repr(DEFAULTS_KEY))
        tenants = {str(t): _limits(v, default, repr(t)) for t, v in raw.items() if t != DEFAULTS_KEY}
        return cls(default, tenants)

    def to_json(self) -> str:
        """The variable's text for this table (child processes get it this way)."""
        out: dict[str, Any] = {DEFAULTS_KEY: self.default.as_dict()}
        out.update({t: limits.as_dict() for t, limits in self.tenants.items()})
        return json.dumps(out, sort_keys=True)


