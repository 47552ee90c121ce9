"""Suites made of parts: one module per part, one entry in the suite's ``parts`` list.

A part owns one parameter object (``suites.<suite>.<part>``), one metric subtree
(``<suite>.<part>.*``) and one slot of the partial (``partial["parts"][<part>]``). The
composite suite assembles the schema, switches parts on, shares progress by work units, and
routes run / merge / finalize to each part switched on; the suite keeps only its own core.

Lifecycle of a part in one audit (``S`` the suite's shard inputs, ``F`` its finalize inputs)::

    part.check_params(params)                  # cross-field checks, {path: message}
    part.check_inputs(params, samples, model)  # needs the loaded model; raise SpecError
    partial = part.run(shard_inputs)           # per shard, JSON data
    partial = part.merge(a, b)                 # exact
    result  = part.finalize(final_inputs, partial)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from ..classifier import Classifier
from ..errors import SpecError
from ..params import Param, ParamKind, ParamSchema
from ..samples import SampleSet

S = TypeVar("S")
F = TypeVar("F")
Fraction = Callable[[float], None]


@dataclass
class PartResult:
    """What one part adds to its suite's result: ``metrics`` land under the part's name."""

    metrics: dict[str, Any] | None
    artifacts: list[str] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class Part(ABC, Generic[S, F]):
    """One part of a composite suite. ``params`` given to the hooks are the suite's validated
    parameters (a part may read the suite's core parameters); its own object is ``own(params)``."""

    name: ClassVar[str]
    help: ClassVar[str]
    schema: ClassVar[ParamSchema]

    def own(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """This part's parameter object."""
        out: dict[str, Any] = params[self.name]
        return out

    def enabled(self, params: Mapping[str, Any]) -> bool:
        return bool(self.own(params)["enabled"])

    def check_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Cross-field problems, keyed by parameter path below the part (``{"fractions": "..."}``)."""
        return {}

    def check_inputs(self, params: Mapping[str, Any], samples: SampleSet, classifier: Classifier) -> None:
        """Checks that need the loaded model (a mask that selects nothing, a surrogate that does not fit)."""
        return None

    def units(self, params: Mapping[str, Any]) -> int:
        """Rough work units of one shard, for the progress shares between parts."""
        return 1

    @abstractmethod
    def metric_paths(self, params: Mapping[str, Any]) -> list[str]:
        """Gate-able metric paths relative to the part (the suite prefixes ``<part>.``)."""

    @abstractmethod
    def run(self, inputs: S) -> Any:
        """This part's JSON-able partial of one shard."""

    def merge(self, a: Any, b: Any) -> Any:
        """Default: per-sample records keyed by sample id, disjoint between shards."""
        return {**a, **b}

    @abstractmethod
    def finalize(self, inputs: F, partial: Any) -> PartResult:
        """Metrics (and files, warnings) of the merged partial."""


def part_params(parts: Sequence[Part[Any, Any]]) -> tuple[Param, ...]:
    """One nested object parameter per part, in list order."""
    return tuple(Param(p.name, ParamKind.OBJECT, None, p.help, schema=p.schema) for p in parts)


class CompositeMixin(Generic[S, F]):
    """The part plumbing of a composite suite: add to a :class:`~.base.Suite` subclass and list
    its ``parts``. The suite builds its shard and finalize inputs; the mixin does the rest."""

    name: ClassVar[str]
    parts: ClassVar[tuple[Part[Any, Any], ...]]

    def enabled_parts(self, params: Mapping[str, Any]) -> list[Part[S, F]]:
        return [p for p in self.parts if p.enabled(params)]

    def check_parts(self, params: dict[str, Any]) -> dict[str, Any]:
        """Every part's cross-field problems at once, as one SpecError."""
        errors: dict[str, str] = {}
        for p in self.parts:
            errors.update({f"{self.name}.{p.name}.{k}": v for k, v in p.check_params(params).items()})
        if errors:
            raise SpecError("invalid parameters: " + "; ".join(f"{k}: {v}" for k, v in errors.items()),
                            errors=errors)
        return params

    def check_part_inputs(self, params: Mapping[str, Any], samples: SampleSet, classifier: Classifier) -> None:
        for p in self.enabled_parts(params):
            p.check_inputs(params, samples, classifier)

    def part_paths(self, params: Mapping[str, Any]) -> list[str]:
        return [f"{p.name}.{path}" for p in self.enabled_parts(params) for path in p.metric_paths(params)]

    def part_units(self, params: Mapping[str, Any]) -> int:
        return sum(p.units(params) for p in self.enabled_parts(params))

    def run_parts(self, params: Mapping[str, Any], inputs: Callable[[Part[S, F], Fraction], S],
                  progress: Fraction, start: int = 0, total: int | None = None) -> dict[str, Any]:
        """part name -> partial, for the parts switched on. Progress: ``start`` units are done
        before the parts, of ``total`` (default: the parts' own units)."""
        total = max(1, total if total is not None else start + self.part_units(params))
        out: dict[str, Any] = {}
        done = start
        for p in self.enabled_parts(params):
            units = p.units(params)

            def sub(f: float, done: int = done, units: int = units) -> None:
                progress((done + units * min(1.0, max(0.0, f))) / total)

            out[p.name] = p.run(inputs(p, sub))
            done += units
        return out

    def merge_parts(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        by_name = {p.name: p for p in self.parts}
        return {name: by_name[name].merge(a[name], b[name]) for name in a}

    def finalize_parts(self, inputs: F, partials: Mapping[str, Any]) -> list[tuple[str, PartResult]]:
        """(part name, result) in list order, for the parts that ran."""
        return [(p.name, p.finalize(inputs, partials[p.name])) for p in self.parts if p.name in partials]

