"""Suites made of parts: schema and metric paths assembled from the parts, progress shared by
work units, per-part merge and finalize; the one rule for metric keys; the surrogate memo."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pytest
import torch

from tests.tiny import TinyNet, tiny_classifier
from worker.engine.errors import SpecError
from worker.engine.params import Param, ParamKind, ParamSchema
from worker.engine.suites import SUITES, get_suite
from worker.engine.suites.attacks import transfer
from worker.engine.suites.keys import colliding, metric_key
from worker.engine.suites.parts import CompositeMixin, Part, PartResult, part_params


@pytest.mark.parametrize("name, value, key", [
    ("eps", 8 / 255, "eps_0p03137"), ("eps", 0.5, "eps_0p5"), ("f", 0.17, "f_0p17"), ("r", 0.125, "r_0p125"),
    ("rot", -30.0, "rot_m30"), ("tx", 3.0, "tx_3"), ("scale", 0.8, "scale_0p8"), ("eps", 16.0, "eps_16"),
])
def test_one_rule_for_number_keys(name, value, key):
    assert metric_key(name, value) == key
    assert "." not in key and "-" not in key


def test_colliding_values_are_the_later_ones_sharing_a_key():
    assert colliding("eps", [0.1, 0.10000001, 0.2, 0.2]) == [0.10000001, 0.2]
    assert colliding("eps", [0.1, 0.2]) == []


class Counting(Part[dict, dict]):
    """A toy part: counts its shard's samples; ``units`` says how much of the work it is."""

    help = "a toy part"
    schema = ParamSchema((Param("enabled", ParamKind.BOOL, True, "run it"),
                          Param("units", ParamKind.INT, 1, "work units", minimum=1)))

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]

    def units(self, params: Mapping[str, Any]) -> int:
        return int(self.own(params)["units"])

    def metric_paths(self, params: Mapping[str, Any]) -> list[str]:
        return ["count"]

    def run(self, inputs: dict) -> Any:
        inputs["progress"](0.5)
        inputs["progress"](1.0)
        return {"n": inputs["n"]}

    def merge(self, a: Any, b: Any) -> Any:
        return {"n": a["n"] + b["n"]}

    def finalize(self, inputs: dict, partial: Any) -> PartResult:
        return PartResult({"count": partial["n"]}, warnings=[{"code": self.name}])


class Toy(CompositeMixin[dict, dict]):
    name = "toy"
    parts = (Counting("a"), Counting("b"))


def test_composite_plumbing_routes_to_each_part_switched_on():
    toy = Toy()
    schema = ParamSchema(part_params(Toy.parts))
    params = schema.validate({"a": {"units": 3}, "b": {"enabled": True}})
    assert toy.part_paths(params) == ["a.count", "b.count"]
    seen: list[float] = []
    partials = [toy.run_parts(params, lambda p, progress, n=n: {"n": n, "progress": progress}, seen.append)
                for n in (2, 5)]
    # a has 3 of the 4 units: its halfway mark is 3/8 of the shard, its end 3/4
    assert seen[:4] == [pytest.approx(3 / 8), pytest.approx(3 / 4), pytest.approx(7 / 8), pytest.approx(1.0)]
    merged = toy.merge_parts(*partials)
    assert merged == {"a": {"n": 7}, "b": {"n": 7}}
    results = dict(toy.finalize_parts({}, merged))
    assert results["a"].metrics == {"count": 7}
    off = schema.validate({"b": {"enabled": False}})
    assert toy.part_paths(off) == ["a.count"]
    assert set(toy.run_parts(off, lambda p, progress: {"n": 1, "progress": progress}, lambda f: None)) == {"a"}


@pytest.mark.parametrize("suite", ["attacks", "perturbation", "invariance"])
def test_composite_suites_take_one_object_per_part(suite):
    cls = SUITES[suite]
    names = [p.name for p in cls.parts]  # type: ignore[attr-defined]
    objects = [p.name for p in cls.params.params if p.kind is ParamKind.OBJECT]
    assert set(names) <= set(objects)
    params = get_suite(suite).validate_params({})
    on = [p.name for p in cls.parts if p.enabled(params)]  # type: ignore[attr-defined]
    for path in get_suite(suite).metric_paths(params):
        head = path.split(".")[0]
        assert head not in names or head in on


def test_a_part_check_is_reported_under_the_part():
    with pytest.raises(SpecError) as err:
        get_suite("perturbation").validate_params({"geometric": {"scales": [0.8, 0.80001]}})
    assert "perturbation.geometric.scales" in err.value.details["errors"]


def _script(path, seed):
    torch.jit.script(TinyNet(1, 10, seed=seed)).save(str(path))
    return {"model": str(path), "card": {"format": "torchscript", "num_classes": 10, "input_size": [1, 32, 32],
                                         "mean": [0.5], "std": [0.25]}}


def test_the_surrogate_is_loaded_once_per_file_card_and_device(tmp_path, monkeypatch):
    from worker.engine import models

    loads: list[str] = []
    real = models.load_classifier

    def counting(path: Any, card: Any = None, **kw: Any) -> Any:
        loads.append(str(path))
        return real(path, card, **kw)

    monkeypatch.setattr(models, "load_classifier", counting)
    monkeypatch.setattr(transfer, "_LOADED", type(transfer._LOADED)())
    target = tiny_classifier()
    spec = _script(tmp_path / "sur.pt", seed=1)
    first = transfer.load_surrogate(spec, target)
    assert transfer.load_surrogate(spec, target) is first  # check_inputs, then every shard
    assert len(loads) == 1
    _script(tmp_path / "sur.pt", seed=2)  # another file under the same path: loaded afresh
    os.utime(tmp_path / "sur.pt")
    second = transfer.load_surrogate(spec, target)
    assert second is not first and len(loads) == 2
    assert not torch.equal(first.logits(torch.zeros(1, 1, 32, 32)), second.logits(torch.zeros(1, 1, 32, 32)))


def test_costs_are_typed_in_code_and_json_in_the_partial():
    import json

    from worker.engine.suites.attacks.robustness import Cost, merge_costs

    a = {"linf": {"pgd": Cost(10, 5, 0.5, 1).to_json()}}
    b = {"linf": {"pgd": Cost(2, 1, 0.25, 1).to_json(), "fgsm": Cost(1, 1, 0.1, 1).to_json()},
         "l2": {"cw": Cost(3, 3, 1.0, 2).to_json()}}
    merged = merge_costs(json.loads(json.dumps(a)), b)  # a checkpointed partial merges with a fresh one
    assert Cost.from_json(merged["linf"]["pgd"]) == Cost(12, 6, 0.75, 2)
    assert set(merged) == {"linf", "l2"} and set(merged["linf"]) == {"pgd", "fgsm"}
    assert json.loads(json.dumps(merged)) == merged
