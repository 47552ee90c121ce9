"""A suite parameter that names another registered model (the attacks suite's surrogate) is a
registered id of the tenant's: checked at submit time, stored as the id (never a path), and
resolved to the file again by the worker, which binds it into the sandbox."""

from service.store.models import Audit
from tests.service.conftest import assert_error_body, audit_body, auth, upload_demo


def _submit(client, model_id, surrogate, tenant="alice"):
    body = audit_body(model_id, suites={"attacks": {"transfer": surrogate}}, gates=[])
    return client.post("/v1/audits", headers=auth(tenant), json=body)


def test_surrogate_model_id_is_stored_as_the_id(client, model_id, store, dispatcher):
    sur = upload_demo(client, name="digits_cnn_pgd")
    assert sur.status_code == 201, sur.json
    resp = _submit(client, model_id, {"model_id": sur.json["id"]})
    assert resp.status_code == 202, resp.json
    with store.session() as s:
        ref = s.get(Audit, resp.json["id"]).request["suites"]["attacks"]["transfer"]
        audit = s.get(Audit, resp.json["id"])
        from service.audits import engine_job
        from service.store import Model

        job = engine_job(audit.request, s.get(Model, model_id), lambda i: s.get(Model, i), device="cpu")
    assert ref == {"model_id": sur.json["id"], "model": None, "card": None}
    # the worker resolves it to the file it binds into the sandbox, named by the id
    sur_ref = job.spec["suites"]["attacks"]["transfer"]
    assert sur_ref["model"] == f"{sur.json['id']}.pt" and sur_ref["card"]["name"] == "digits_cnn_pgd"
    assert job.inputs[f"{sur.json['id']}.pt"].is_file()
    assert set(dispatcher.sent) == {resp.json["id"]}  # fanned out to up to ROBUSTAUDIT_FANOUT workers


def test_unknown_or_foreign_surrogate_is_422_and_nothing_is_queued(client, model_id, dispatcher):
    body = assert_error_body(_submit(client, model_id, {"model_id": "nope"}), 422, "invalid_spec")
    assert "suites.attacks.transfer.model_id" in body["details"]["errors"]
    bobs = upload_demo(client, tenant="bob", name="digits_cnn_pgd").json["id"]
    # another tenant's model does not exist for alice
    body = assert_error_body(_submit(client, model_id, {"model_id": bobs}), 422, "invalid_spec")
    assert "no registered model" in body["message"]
    assert dispatcher.sent == []


def test_surrogate_with_both_id_and_files_is_422(client, model_id):
    body = assert_error_body(_submit(client, model_id, {"model_id": "x", "model": "/tmp/a.pt"}), 422)
    assert "not accepted over the API" in str(body["details"]["errors"])
