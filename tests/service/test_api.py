"""The API through Flask's test client: models, audits, validation, errors, tenants, idempotency."""

from __future__ import annotations

import io
import json

from tests.service.conftest import DEMO, assert_error_body, audit_body, auth, post_audit, upload_demo


def test_upload_model_dedups_and_lists(client):
    first = upload_demo(client)
    assert first.status_code == 201
    model = first.json
    assert len(model["sha256"]) == 64 and model["format"] == "torchscript" and model["card"]["num_classes"] == 10
    again = upload_demo(client)
    assert again.status_code == 200 and again.json["id"] == model["id"]
    listed = client.get("/v1/models", headers=auth()).json
    assert listed["total"] == 1 and listed["items"][0]["id"] == model["id"]
    assert client.get(f"/v1/models/{model['id']}", headers=auth()).json["sha256"] == model["sha256"]


def test_upload_not_a_checkpoint_is_422(client, config):
    card = (DEMO / "digits_cnn.card.json").read_bytes()
    resp = client.post("/v1/models", headers=auth(), content_type="multipart/form-data",
                       data={"checkpoint": (io.BytesIO(b"not a model"), "x.pt"), "card": (io.BytesIO(card), "c")})
    assert_error_body(resp, 422, "model_load_error")
    assert not list((config.storage_dir / "models").glob("*"))


def test_upload_bad_card_and_missing_parts(client):
    with open(DEMO / "digits_cnn.pt", "rb") as ckpt:
        resp = client.post("/v1/models", headers=auth(), content_type="multipart/form-data",
                           data={"checkpoint": (ckpt, "m.pt"), "card": (io.BytesIO(b"{nope"), "c")})
    assert_error_body(resp, 422, "model_card_error")
    resp = client.post("/v1/models", headers=auth(), content_type="multipart/form-data",
                       data={"card": (io.BytesIO(b"{}"), "c")})
    assert_error_body(resp, 422)


def test_oversized_upload_is_413(client):
    big = io.BytesIO(b"\0" * (3 * 1024 * 1024))  # the fixture's limit is 2 MB
    resp = client.post("/v1/models", headers=auth(), content_type="multipart/form-data",
                       data={"checkpoint": (big, "big.pt"), "card": (io.BytesIO(b"{}"), "c")})
    assert_error_body(resp, 413, "payload_too_large")


def test_submit_and_get(client, model_id, dispatcher):
    resp = post_audit(client, audit_body(model_id))
    assert resp.status_code == 202
    audit_id = resp.json["id"]
    assert resp.json["status"] == "queued"
    assert resp.headers["Location"].endswith(f"/v1/audits/{audit_id}")
    assert dispatcher.sent == [audit_id]
    got = client.get(f"/v1/audits/{audit_id}", headers=auth()).json
    assert got["status"] == "queued" and got["progress"] == {"clean": 0.0} and got["report"] is None
    assert got["request"]["dataset"]["n_samples"] == 20
    assert got["request"]["gates"][0]["metric"] == "clean.top1"
    assert_error_body(client.get(f"/v1/audits/{audit_id}/report", headers=auth()), 409, "report_not_ready")


def test_bad_requests_get_4xx_with_error_body(client, model_id, dispatcher):
    raw = client.post("/v1/audits", headers=auth(), data="{not json", content_type="application/json")
    assert_error_body(raw, 400, "invalid_json")
    assert_error_body(post_audit(client, audit_body(model_id, suites={"nope": {}})), 422, "validation_error")
    bad_param = assert_error_body(post_audit(client, audit_body(model_id, suites={"clean": {"ece_bins": "x"}})), 422)
    assert "clean" in bad_param["details"]["errors"]["suites"]
    # a value marshmallow lets through but the engine's bounds refuse
    out_of_range = post_audit(client, audit_body(model_id, suites={"clean": {"ece_bins": 0}}))
    assert_error_body(out_of_range, 422)
    assert_error_body(post_audit(client, audit_body(model_id, gates=["clean.nothing >= 1"])), 422, "invalid_spec")
    assert_error_body(post_audit(client, audit_body(model_id, gates=["clean.per_class.cat >= 1"])), 422,
                      "invalid_spec")
    assert_error_body(post_audit(client, audit_body(model_id, dataset="nope:x")), 422, "invalid_spec")
    missing = {"kind": "npz", "path": "missing.npz"}
    assert_error_body(post_audit(client, audit_body(model_id, dataset=missing)), 422, "dataset_error")
    outside = {"kind": "npz", "path": "/etc/passwd"}
    assert_error_body(post_audit(client, audit_body(model_id, dataset=outside)), 422, "path_not_allowed")
    assert_error_body(post_audit(client, audit_body("0" * 32)), 404, "not_found")
    assert_error_body(post_audit(client, {"dataset": "builtin:digits"}), 422, "validation_error")
    assert_error_body(post_audit(client, audit_body(model_id, extra=1)), 422, "validation_error")
    resp = client.post("/v1/audits", headers=auth(), data="x=1", content_type="text/plain")
    assert_error_body(resp, 415)
    assert dispatcher.sent == []


def test_auth_and_tenant_isolation(client, model_id):
    assert_error_body(client.get("/v1/audits"), 401, "unauthorized")
    assert_error_body(client.get("/v1/audits", headers={"Authorization": "Bearer wrong"}), 401)
    audit_id = post_audit(client, audit_body(model_id)).json["id"]
    for path in (f"/v1/audits/{audit_id}", f"/v1/audits/{audit_id}/report", f"/v1/audits/{audit_id}/artifacts",
                 f"/v1/models/{model_id}"):
        assert_error_body(client.get(path, headers=auth("bob")), 404, "not_found")
    assert_error_body(client.delete(f"/v1/audits/{audit_id}", headers=auth("bob")), 404)
    assert_error_body(post_audit(client, audit_body(model_id), tenant="bob"), 404)
    assert client.get("/v1/audits", headers=auth("bob")).json["total"] == 0
    assert client.get("/v1/models", headers=auth("bob")).json["total"] == 0


def test_idempotency(client, model_id, dispatcher):
    key = {"Idempotency-Key": "build-42"}
    a = post_audit(client, audit_body(model_id), headers=key)
    b = post_audit(client, audit_body(model_id), headers=key)
    assert a.status_code == b.status_code == 202 and a.json["id"] == b.json["id"]
    assert dispatcher.sent == [a.json["id"]]
    assert_error_body(post_audit(client, audit_body(model_id, label="other"), headers=key), 409,
                      "idempotency_conflict")
    other_tenant = post_audit(client, audit_body(model_id), headers=key, tenant="bob")
    assert other_tenant.status_code == 404  # bob cannot see alice's model: keys are per tenant


def test_list_filters_and_pagination(client, model_id):
    ids = [post_audit(client, audit_body(model_id, label=f"l{i % 2}")).json["id"] for i in range(5)]
    page1 = client.get("/v1/audits?page_size=2", headers=auth()).json
    page3 = client.get("/v1/audits?page_size=2&page=3", headers=auth()).json
    assert page1["total"] == 5 and len(page1["items"]) == 2 and len(page3["items"]) == 1
    assert {i["id"] for i in page1["items"]} | {i["id"] for i in page3["items"]} <= set(ids)
    assert client.get("/v1/audits?label=l0", headers=auth()).json["total"] == 3
    assert client.get("/v1/audits?status=queued", headers=auth()).json["total"] == 5
    assert client.get("/v1/audits?status=running", headers=auth()).json["total"] == 0
    assert client.get(f"/v1/audits?model={model_id}", headers=auth()).json["total"] == 5
    assert_error_body(client.get("/v1/audits?status=bogus", headers=auth()), 422)
    assert_error_body(client.get("/v1/audits?page=0", headers=auth()), 422)


def test_cancel_queued(client, model_id):
    audit_id = post_audit(client, audit_body(model_id)).json["id"]
    resp = client.delete(f"/v1/audits/{audit_id}", headers=auth())
    assert resp.status_code == 202 and resp.json["status"] == "cancelled"
    assert client.get(f"/v1/audits/{audit_id}", headers=auth()).json["status"] == "cancelled"


def test_multipart_audit_with_inline_upload(client, dispatcher):
    spec = json.dumps({k: v for k, v in audit_body("").items() if k != "model"})
    with open(DEMO / "digits_cnn.pt", "rb") as ckpt, open(DEMO / "digits_cnn.card.json", "rb") as card:
        resp = client.post("/v1/audits", headers=auth(), content_type="multipart/form-data",
                           data={"spec": spec, "checkpoint": (ckpt, "m.pt"), "card": (card, "c.json")})
    assert resp.status_code == 202, resp.json
    assert client.get("/v1/models", headers=auth()).json["total"] == 1


def test_unknown_route_and_method_use_the_error_body(client):
    assert_error_body(client.get("/v1/nothing", headers=auth()), 404)
    assert_error_body(client.put("/v1/audits", headers=auth()), 405)


def test_ops_endpoints(client, model_id):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["checks"]["store"] == "ok"
    post_audit(client, audit_body(model_id))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'robustaudit_audits{status="queued"} 1.0' in text
    assert "robustaudit_queue_depth 1.0" in text


def test_openapi_served(client):
    doc = client.get("/v1/openapi.json").json
    assert "/v1/audits" in doc["paths"] and "bearerAuth" in doc["components"]["securitySchemes"]


def test_readyz_is_503_when_the_broker_is_down(config, store):
    from service.app import create_app

    class DownBroker:
        def send(self, audit_id):
            raise ConnectionError("broker down")

        def ping(self):
            raise ConnectionError("broker down")

    app = create_app(config, dispatcher=DownBroker(), store=store)
    client = app.test_client()
    body = assert_error_body(client.get("/readyz"), 503, "not_ready")
    assert body["details"]["checks"] == {"store": "ok", "broker": "unreachable: ConnectionError"}
    model_id = upload_demo(client).json["id"]
    resp = post_audit(client, audit_body(model_id))
    assert_error_body(resp, 503, "unavailable")
    audit_id = resp.get_json()["details"]["audit_id"]
    assert client.get(f"/v1/audits/{audit_id}", headers=auth()).json["status"] == "failed"
