"""A suite parameter that names another registered model (the attacks suite's surrogate) is
resolved at submit time to the stored checkpoint and card, tenant-scoped."""

from service.store.models import Audit
from tests.service.conftest import assert_error_body, audit_body, auth, upload_demo


def _submit(client, model_id, surrogate, tenant="alice"):
    body = audit_body(model_id, suites={"attacks": {"surrogate": surrogate}}, gates=[])
    return client.post("/v1/audits", headers=auth(tenant), json=body)


def test_surrogate_model_id_resolves_to_the_stored_files(client, model_id, store, dispatcher):
    sur = upload_demo(client, name="digits_cnn_pgd")
    assert sur.status_code == 201, sur.json
    resp = _submit(client, model_id, {"model_id": sur.json["id"]})
    assert resp.status_code == 202, resp.json
    with store.session() as s:
        ref = s.get(Audit, resp.json["id"]).request["suites"]["attacks"]["surrogate"]
    assert ref["model_id"] == sur.json["id"]
    assert ref["model"].endswith(".pt") and ref["model"] != ""
    assert ref["card"]["name"] == "digits_cnn_pgd"
    assert dispatcher.sent == [resp.json["id"]]


def test_unknown_or_foreign_surrogate_is_422_and_nothing_is_queued(client, model_id, dispatcher):
    body = assert_error_body(_submit(client, model_id, {"model_id": "nope"}), 422, "invalid_spec")
    assert "suites.attacks.surrogate.model_id" in body["details"]["errors"]
    bobs = upload_demo(client, tenant="bob", name="digits_cnn_pgd").json["id"]
    # another tenant's model does not exist for alice
    body = assert_error_body(_submit(client, model_id, {"model_id": bobs}), 422, "invalid_spec")
    assert "no registered model" in body["message"]
    assert dispatcher.sent == []


def test_surrogate_with_both_id_and_files_is_422(client, model_id):
    body = assert_error_body(_submit(client, model_id, {"model_id": "x", "model": "/tmp/a.pt"}), 422)
    assert "exclusive" in str(body["details"]["errors"])
