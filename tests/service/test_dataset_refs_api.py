"""Over the API, every dataset reference an audit reads (the audit's, its label_sets file, the shift suite's
second dataset) is confined to the data roots, and a path outside them is refused without being read."""

from __future__ import annotations

import numpy as np

from tests.service.conftest import assert_error_body, audit_body, auth, post_audit


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("a file outside the data roots was opened")


def test_shift_dataset_and_label_sets_are_bounded_by_the_data_roots(client, model_id, config, dispatcher,
                                                                     tmp_path, monkeypatch):
    data = config.data_roots[0]
    data.mkdir(parents=True, exist_ok=True)
    np.savez(data / "v2.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 2, 3]))
    (data / "real.json").write_text('{"digits:0": [0]}')
    np.savez(tmp_path / "secret.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 2, 3]))
    (tmp_path / "secret.json").write_text("{}")
    (data / "link.json").symlink_to(tmp_path / "secret.json")
    # build_request only resolves paths: nothing on the way may open a dataset or a label-sets file
    monkeypatch.setattr("worker.engine.datasets.sources.npz.NpzSource.catalog", _never)
    monkeypatch.setattr("worker.engine.datasets.label_sets.read_json", _never)

    inside = {"dataset": {"kind": "npz", "path": "v2.npz", "n_samples": 4}, "bins": 2}
    ok = post_audit(client, audit_body(model_id, suites={"shift": inside}, gates=["shift.controlled_drop <= 0.03"]))
    assert ok.status_code == 202, ok.get_json()
    stored = client.get(f"/v1/audits/{ok.get_json()['id']}", headers=auth()).get_json()["request"]
    assert stored["suites"]["shift"]["dataset"] == {"kind": "npz", "path": "v2.npz", "n_samples": 4, "seed": 0}
    sent = len(dispatcher.sent)

    for dataset in ({"kind": "npz", "path": str(tmp_path / "secret.npz")}, "npz:../secret.npz",
                    {"kind": "npz", "path": "v2.npz", "label_sets": "../secret.json"},
                    {"kind": "npz", "path": "v2.npz", "label_sets": "link.json"}):
        body = audit_body(model_id, suites={"shift": {"dataset": dataset}})
        err = assert_error_body(post_audit(client, body), 422, "path_not_allowed")
        assert err["message"].startswith("suites.shift.dataset: ")
    missing = audit_body(model_id, suites={"shift": {"dataset": "npz:nothing.npz"}})
    assert_error_body(post_audit(client, missing), 422, "dataset_error")
    assert_error_body(post_audit(client, audit_body(model_id, suites={"shift": {}})), 422, "invalid_spec")
    assert_error_body(post_audit(client, audit_body(model_id, suites={"shift": {"dataset": 7}})), 422,
                      "invalid_spec")
    # the audit's own dataset: label_sets outside, or through a symlink that leads out
    for label_sets in ("../secret.json", str(tmp_path / "secret.json"), "link.json"):
        body = audit_body(model_id, dataset={"kind": "builtin", "name": "digits", "label_sets": label_sets})
        assert_error_body(post_audit(client, body), 422, "path_not_allowed")
    assert post_audit(client, audit_body(model_id, dataset={"kind": "builtin", "name": "digits",
                                                            "label_sets": "real.json"})).status_code == 202
    assert len(dispatcher.sent) == sent + 1  # nothing refused was queued
