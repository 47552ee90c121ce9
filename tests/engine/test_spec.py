import pytest

from worker.engine.errors import SpecError
from worker.engine.spec import AuditSpec, validate_suites


def base(**extra):
    return {"model": "m.pt", "dataset": "builtin:digits", **extra}


def test_clean_always_first_and_defaults_filled():
    suites = validate_suites([])
    assert list(suites) == ["clean"]
    assert suites["clean"] == {"ece_bins": 15}
    assert validate_suites({"clean": {"ece_bins": 10}})["clean"]["ece_bins"] == 10
    assert validate_suites({"clean": None})["clean"]["ece_bins"] == 15


def test_round_trip():
    spec = AuditSpec.from_dict(base(suites=["clean"], gates=["clean.top1>=0.5"], seed=3, label="nightly"))
    again = AuditSpec.from_dict(spec.to_dict())
    assert again.to_dict() == spec.to_dict()
    assert spec.dataset.to_dict()["kind"] == "builtin"


@pytest.mark.parametrize("raw, fragment", [
    (base(suites=["nope"]), "unknown suite"),
    (base(suites={"clean": {"ece_bins": 1}}), "clean.ece_bins"),
    (base(suites={"clean": {"colour": 1}}), "unknown parameter"),
    (base(suites={"clean": 3}), "must be an object"),
    (base(suites="clean"), "'suites'"),
    (base(gates=["clean.top3>=0.5"]), "does not produce"),
    (base(gates=["fragile.x>=0.5"]), "not requested"),
    (base(gates="clean.top1>=0.5"), "'gates' must be a list"),
    (base(extra=1), "unknown keys"),
    ({"dataset": "builtin:digits"}, "'model'"),
    ({"model": "m.pt"}, "'dataset' is required"),
    (base(dataset="ftp:foo"), "dataset"),
    (base(seed=-1), "'seed'"),
    (base(device="tpu"), "'device'"),
    ([], "JSON object"),
])
def test_errors(raw, fragment):
    with pytest.raises(SpecError, match=fragment):
        AuditSpec.from_dict(raw)
