"""The audit specification: what to audit, with which suites, against which gates.

:meth:`AuditSpec.from_dict` validates everything that can be checked without loading the
model or the data (suite names, suite parameters, gate metric paths), so the CLI and the API
refuse a bad request before any work starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .datasets import DatasetRef
from .errors import AuditInputError, SpecError
from .gates import Baseline, Gate, check_gates
from .suites import SUITES, get_suite

SPEC_KEYS = {"model", "card", "dataset", "suites", "gates", "seed", "device", "label", "accept_unreliable",
             "baseline"}


@dataclass
class AuditSpec:
    """A validated audit request.

    Args:
        model: checkpoint path (the service resolves a model id to its stored path).
        card: model card path or object; None reads the card beside the checkpoint.
        dataset: the dataset reference with its sampling settings.
        suites: suite name -> validated parameters, in run order (``clean`` first).
        gates: thresholds that decide the verdict.
        seed: seeds every random choice of the suites.
        device: "auto", "cpu", "cuda" or "cuda:N".
        label: free text for the user.
        accept_unreliable: let gates pass on metrics that a sanity flag makes unreliable
            (gradient masking, randomness, with no gradient-free attack behind them).
        baseline: an earlier report's values of the metrics that gates written against a baseline
            (``clean.top1 >= baseline - 0.05``) compare with; the CLI and the API fill it in.
    """

    model: str
    dataset: DatasetRef
    suites: dict[str, dict[str, Any]]
    card: str | dict[str, Any] | None = None
    gates: list[Gate] = field(default_factory=list)
    seed: int = 0
    device: str = "auto"
    label: str | None = None
    accept_unreliable: bool = False
    baseline: Baseline | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AuditSpec:
        if not isinstance(raw, Mapping):
            raise SpecError("the audit specification must be a JSON object")
        unknown = sorted(set(raw) - SPEC_KEYS)
        if unknown:
            raise SpecError(f"unknown keys in the audit specification: {unknown}; known: {sorted(SPEC_KEYS)}")
        model = raw.get("model")
        if not isinstance(model, str) or not model:
            raise SpecError("'model' must be the path of a checkpoint")
        card = raw.get("card")
        if card is not None and not isinstance(card, (str, dict)):
            raise SpecError("'card' must be a path or a model card object")
        if "dataset" not in raw:
            raise SpecError("'dataset' is required, e.g. \"builtin:digits\"")
        try:
            dataset = DatasetRef.parse(raw["dataset"])
        except AuditInputError as exc:
            raise SpecError(f"dataset: {exc.message}") from None
        suites = validate_suites(raw.get("suites", {}))
        gates_raw = raw.get("gates", [])
        if not isinstance(gates_raw, list):
            raise SpecError("'gates' must be a list")
        gates = [Gate.parse(g) for g in gates_raw]
        check_gates(gates, metric_catalog(suites))
        seed = raw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SpecError("'seed' must be a non-negative integer")
        device = raw.get("device", "auto")
        if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
            raise SpecError("'device' must be auto, cpu, cuda or cuda:N")
        label = raw.get("label")
        if label is not None and not isinstance(label, str):
            raise SpecError("'label' must be a string")
        accept = raw.get("accept_unreliable", False)
        if not isinstance(accept, bool):
            raise SpecError("'accept_unreliable' must be true or false")
        baseline = None if raw.get("baseline") is None else Baseline.from_dict(raw["baseline"])
        return cls(model=model, card=card, dataset=dataset, suites=suites, gates=gates, seed=seed,
                   device=device, label=label, accept_unreliable=accept, baseline=baseline)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "card": self.card, "dataset": self.dataset.to_dict(),
                "suites": self.suites, "gates": [g.to_dict() for g in self.gates], "seed": self.seed,
                "device": self.device, "label": self.label, "accept_unreliable": self.accept_unreliable,
                "baseline": None if self.baseline is None else self.baseline.to_dict()}


def validate_suites(raw: Any) -> dict[str, dict[str, Any]]:
    """Suite name -> validated params, ordered so that every suite follows what it requires.

    Accepts a list of names or a mapping name -> params (null meaning defaults).
    """
    if isinstance(raw, list):
        if not all(isinstance(n, str) for n in raw):
            raise SpecError("'suites' must be a list of names or an object {name: params}")
        raw = {n: {} for n in raw}
    if not isinstance(raw, Mapping):
        raise SpecError("'suites' must be a list of names or an object {name: params}")
    requested: dict[str, dict[str, Any]] = {}
    for name, params in raw.items():
        if params is not None and not isinstance(params, Mapping):
            raise SpecError(f"parameters of suite {name!r} must be an object")
        requested[name] = get_suite(name).validate_params(dict(params) if params is not None else None)
    ordered: dict[str, dict[str, Any]] = {}

    def add(name: str, trail: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in trail:
            raise SpecError(f"suites require each other in a cycle: {' -> '.join(trail + (name,))}")
        for dep in SUITES[name].requires:
            add(dep, trail + (name,))
        ordered[name] = requested.get(name) or get_suite(name).validate_params({})

    add("clean", ())
    for name in requested:
        add(name, ())
    return ordered


def metric_catalog(suites: Mapping[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Suite name -> the metric path patterns it will produce with these parameters."""
    return {name: get_suite(name).metric_paths(params) for name, params in suites.items()}


def dataset_references(spec: AuditSpec) -> list[tuple[str, DatasetRef]]:
    """Every dataset the spec reads, with where it is named: ``("dataset", the audit's)``, then each
    suite's dataset parameters (``("suites.shift.dataset", ...)``, :attr:`Suite.dataset_params`).

    Raises:
        SpecError: a requested suite leaves a dataset parameter it needs unset.
    """
    found = [("dataset", spec.dataset)]
    for name, params in spec.suites.items():
        for key in SUITES[name].dataset_params:
            where = f"suites.{name}.{key}"
            if params.get(key) is None:
                raise SpecError(f"{where}: suite {name!r} needs a dataset reference here", errors={where: "required"})
            found.append((where, DatasetRef.parse(params[key])))
    return found
