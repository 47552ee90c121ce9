"""Every registered suite keeps the contract the runner, CLI and service rely on."""

import fnmatch
import json

import pytest

from worker.engine.suites import SUITES, get_suite


@pytest.mark.parametrize("name", sorted(SUITES))
def test_suite_contract(name):
    suite = get_suite(name)
    assert suite.name == name and suite.description
    json.dumps(suite.params.describe())  # the service and `robustaudit suites` serialise it
    for params in (suite.validate_params({}), suite.validate_params(suite.demo_params)):
        paths = suite.metric_paths(params)
        assert paths and len(paths) == len(set(paths))
        for pattern in suite.headline:
            assert any(fnmatch.fnmatchcase(p, pattern) for p in paths), f"{name}: headline {pattern!r} matches nothing"
    for dep in suite.requires:
        assert dep in SUITES
