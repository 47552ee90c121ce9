"""The invariance suite and the attacks suite's saliency part over the API and the CLI: accepted with
their parameters, refused out of bounds (nothing queued), gates on their paths, the metric catalog."""

from __future__ import annotations

import json

import yaml

from service.openapi import openapi_yaml
from tests.service.conftest import assert_error_body, audit_body, auth, post_audit
from worker.engine.cli import main

SUITES = {"invariance": {"null_space": {"method": "dense", "steps": 5, "objective": "linf"}},
          "attacks": {"norms": ["linf"], "saliency": {"top_fraction": 0.3, "examples": 2}}}
GATES = ["invariance.null_space.dimension <= 0", "invariance.null_space.smallest_singular_value > 0.01",
         "attacks.saliency.overlap.median <= 0.9", "attacks.saliency.overlap.linf.median <= 0.9"]


def test_the_new_suite_and_part_are_accepted_with_their_parameters(client, model_id, dispatcher):
    resp = post_audit(client, audit_body(model_id, suites=SUITES, gates=GATES))
    assert resp.status_code == 202, resp.get_json()
    got = client.get(f"/v1/audits/{resp.json['id']}", headers=auth()).json
    assert got["request"]["suites"]["invariance"]["null_space"]["objective"] == "linf"
    assert got["request"]["suites"]["attacks"]["saliency"]["top_fraction"] == 0.3
    assert [g["metric"] for g in got["request"]["gates"]] == [g.split(" ")[0] for g in GATES]
    assert resp.json["id"] in dispatcher.sent


def test_out_of_bounds_and_unknown_paths_are_refused_before_anything_is_queued(client, model_id, dispatcher):
    for suites in ({"invariance": {"null_space": {"rtol": 1.0}}}, {"invariance": {"null_space": {"k": 65}}},
                   {"invariance": {"null_space": {"method": "svd"}}}, {"invariance": {"nope": {}}},
                   {"attacks": {"saliency": {"top_fraction": 0.0}}}, {"attacks": {"saliency": {"examples": 99}}}):
        assert_error_body(post_audit(client, audit_body(model_id, suites=suites)), 422)
    assert_error_body(post_audit(client, audit_body(model_id, suites=SUITES,
                                                    gates=["invariance.null_space.rank >= 1"])), 422, "invalid_spec")
    assert dispatcher.sent == []


def test_the_openapi_document_and_the_metric_catalog_list_them(capsys):
    schemas = yaml.safe_load(openapi_yaml())["components"]["schemas"]
    assert "invariance" in schemas["Suites"]["properties"]
    assert set(schemas["InvarianceNullSpaceParams"]["properties"]) == {
        "enabled", "method", "rtol", "k", "iterations", "objective", "steps", "examples"}
    assert schemas["AttacksSaliencyParams"]["properties"]["top_fraction"]["maximum"] == 0.99
    assert main(["metrics", "--suite", "invariance", "--suite", "attacks", "--json"]) == 0
    catalog = json.loads(capsys.readouterr().out)
    assert catalog["invariance"] == ["null_space.dimension", "null_space.smallest_singular_value",
                                     "null_space.linf.median", "null_space.l2.median", "null_space.max_logit_change",
                                     "null_space.same_prediction"]
    assert {"saliency.overlap.median", "saliency.overlap.chance", "saliency.overlap.linf.median",
            "saliency.overlap.l2.median"} <= set(catalog["attacks"])
