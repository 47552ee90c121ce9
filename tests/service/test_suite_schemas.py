"""The marshmallow schemas are built from the engine's Param definitions, for every kind."""

import pytest
from marshmallow import ValidationError

from service.api.suite_schemas import _FIELD_BUILDERS, params_schema, suites_schema
from worker.engine.params import Param, ParamKind, ParamSchema
from worker.engine.suites import SUITES


def test_every_param_kind_has_a_field_builder():
    assert set(_FIELD_BUILDERS) == set(ParamKind)


def test_every_registered_suite_builds():
    schema = suites_schema()()
    assert set(schema.fields) == set(SUITES)


def test_string_list_validated():
    schema = params_schema(ParamSchema((Param("names", ParamKind.STR_LIST, ["a"], "names"),)), "T")()
    assert schema.load({"names": ["x", "y"]}) == {"names": ["x", "y"]}
    with pytest.raises(ValidationError):
        schema.load({"names": ["x", ""]})


def test_parameters_of_an_older_shape_are_refused_naming_the_new_place():
    schema = suites_schema()()
    with pytest.raises(ValidationError) as err:
        schema.load({"attacks": {"targeted_eps": 0.1, "norms": ["linf"]}})
    assert err.value.messages == {"attacks": {"targeted_eps": [
        "moved: write attacks.targeted.eps (see docs/parameters.md)"]}}
    with pytest.raises(ValidationError, match="attacks.targeted.enabled"):
        schema.load({"attacks": {"targeted": False}})
    loaded = schema.load({"attacks": {"targeted": {"enabled": False}, "transfer": {"model_id": "m"}}})
    assert loaded["attacks"]["targeted"] == {"enabled": False}
