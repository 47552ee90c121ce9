import pytest

from worker.engine.errors import SpecError
from worker.engine.params import Param, ParamKind, ParamSchema

SCHEMA = ParamSchema((
    Param("steps", ParamKind.INT, 10, "steps", minimum=1, maximum=100),
    Param("eps", ParamKind.FLOAT_LIST, [0.1], "budgets", minimum=0.0, maximum=1.0),
    Param("loss", ParamKind.CHOICE, "ce", "loss", choices=("ce", "margin")),
    Param("batch", ParamKind.INT, None, "batch", minimum=1, nullable=True),
    Param("flag", ParamKind.BOOL, False, "flag"),
    Param("sub", ParamKind.OBJECT, None, "nested", nullable=True,
          schema=ParamSchema((Param("k", ParamKind.INT, 1, "k", minimum=1),))),
))


def test_defaults_filled():
    assert SCHEMA.validate({}) == {"steps": 10, "eps": [0.1], "loss": "ce", "batch": None, "flag": False,
                                   "sub": None}


def test_values_coerced():
    out = SCHEMA.validate({"steps": 5.0, "eps": [0, 0.5], "sub": {"k": 3}})
    assert out["steps"] == 5 and isinstance(out["steps"], int)
    assert out["eps"] == [0.0, 0.5]
    assert out["sub"] == {"k": 3}


@pytest.mark.parametrize("raw, key", [
    ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": True}, "steps"),
    ({"eps": []}, "eps"), ({"eps": [2.0]}, "eps"), ({"eps": [0.1, 0.1]}, "eps"), ({"eps": 0.1}, "eps"),
    ({"loss": "l1"}, "loss"), ({"flag": 1}, "flag"), ({"nope": 1}, "nope"), ({"sub": {"k": 0}}, "sub.k"),
    ({"steps": float("nan")}, "steps"), ({"steps": None}, "steps"),
])
def test_every_problem_named(raw, key):
    with pytest.raises(SpecError) as info:
        SCHEMA.validate(raw)
    assert key in info.value.details["errors"]


def test_all_errors_reported_at_once():
    with pytest.raises(SpecError) as info:
        SCHEMA.validate({"steps": -1, "loss": "x"})
    assert set(info.value.details["errors"]) == {"steps", "loss"}


def test_describe_is_json_ready():
    d = SCHEMA.describe()
    assert [p["name"] for p in d] == ["steps", "eps", "loss", "batch", "flag", "sub"]
    assert d[2]["choices"] == ["ce", "margin"]
    assert d[5]["fields"][0]["name"] == "k"


def test_choice_with_an_enum_returns_members_and_describes_values():
    from enum import StrEnum

    from worker.engine.params import as_choice

    class Mode(StrEnum):
        FAST = "fast"
        SLOW = "slow"

    schema = ParamSchema((Param("mode", ParamKind.CHOICE, "fast", "speed", enum=Mode),
                          Param("modes", ParamKind.CHOICE_LIST, ["slow"], "speeds", enum=Mode)))
    out = schema.validate({"modes": ["fast", "slow"]})
    assert out["mode"] is Mode.FAST and out["modes"] == [Mode.FAST, Mode.SLOW]
    assert all(isinstance(m, Mode) for m in out["modes"])
    assert schema.validate(out) == out  # validated values validate again (members are accepted)
    assert schema.describe()[0]["choices"] == ["fast", "slow"] and schema.describe()[0]["default"] == "fast"
    with pytest.raises(SpecError, match=r"mode: must be one of \['fast', 'slow'\]"):
        schema.validate({"mode": "medium"})
    assert as_choice(Mode, "slow", "x.mode") is Mode.SLOW
    with pytest.raises(SpecError) as info:
        as_choice(Mode, "medium", "x.mode")
    assert info.value.details["errors"] == {"x.mode": "must be one of ['fast', 'slow']"}
