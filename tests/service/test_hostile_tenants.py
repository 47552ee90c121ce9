"""What one tenant can try against the others and the server through the API, sent as a hostile
client would, each asserting that the side effect did not happen: symlinks planted in an audit's
folder, card keys that name a repository, a path or a kernel, upload checks that flood the pool,
the upload cache as an oracle, and paths longer than the OS takes."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service import uploads
from service.app import create_app
from service.store import Audit
from service.tenant_limits import LimitsTable, TenantLimits
from service.upload_checks import UploadCheckPool, UploadQueueFull
from tests.service.conftest import DEMO, assert_error_body, audit_body, auth, post_audit, upload_demo
from worker.engine.card import ModelCard
from worker.engine.errors import ModelCardError
from worker.engine.html.gallery import build_gallery

# -- artifacts: a symlink planted where sandboxed code could write ------------------------------


def _plant(config, audit_id: str, other: Path) -> Path:
    """The audit's folder as code in the sandbox could leave it: real files, and symlinks, a FIFO
    and a symlinked subfolder pointing at the job store and at another tenant's files."""
    arts = config.storage_dir / "audits" / audit_id / "artifacts"
    (arts / "clean").mkdir(parents=True)
    (arts / "clean" / "ok.txt").write_text("mine")
    os.symlink(config.home / "store.sqlite", arts / "store.sqlite")
    os.symlink(other / "secret.txt", arts / "clean" / "secret.txt")
    os.symlink(other, arts / "others")  # a whole folder
    os.symlink(config.home, arts / "home")
    os.mkfifo(arts / "clean" / "pipe")
    return arts


def test_planted_symlinks_are_neither_listed_nor_served(client, config, store, model_id):
    other = config.storage_dir / "checkpoints" / "another-tenants-audit"
    other.mkdir(parents=True)
    (other / "secret.txt").write_text("another tenant's partial")
    audit_id = post_audit(client, audit_body(model_id)).json["id"]
    arts = _plant(config, audit_id, other)
    listed = client.get(f"/v1/audits/{audit_id}/artifacts", headers=auth()).json["items"]
    assert [(a["name"], a["size_bytes"]) for a in listed] == [("clean/ok.txt", 4)]
    assert client.get(f"/v1/audits/{audit_id}/artifacts/clean/ok.txt", headers=auth()).get_data() == b"mine"
    for name in ("store.sqlite", "clean/secret.txt", "others/secret.txt", "home/store.sqlite", "clean/pipe",
                 "clean", "clean//ok.txt", "./clean/ok.txt", "clean/../clean/ok.txt"):
        resp = client.get(f"/v1/audits/{audit_id}/artifacts/{name}", headers=auth())
        body = assert_error_body(resp, 404)
        assert "SQLite" not in resp.get_data(as_text=True) and "partial" not in body["message"]
    # the whole artifacts folder, then the audit's own folder, replaced by a symlink
    os.rename(arts, arts.with_name("gone"))
    os.symlink(other, arts)
    assert client.get(f"/v1/audits/{audit_id}/artifacts", headers=auth()).json["items"] == []
    assert_error_body(client.get(f"/v1/audits/{audit_id}/artifacts/secret.txt", headers=auth()), 404)
    folder = config.storage_dir / "audits" / audit_id
    os.rename(folder, folder.with_name("moved"))
    os.symlink(other.parent, folder)
    assert client.get(f"/v1/audits/{audit_id}/artifacts", headers=auth()).json["items"] == []
    assert_error_body(client.get(f"/v1/audits/{audit_id}/artifacts/another-tenants-audit/secret.txt",
                                 headers=auth()), 404)


def test_report_html_gallery_does_not_follow_planted_symlinks(tmp_path):
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
    other = tmp_path / "other-tenant"
    other.mkdir()
    (other / "leak_maps.png").write_bytes(png)
    out = tmp_path / "audit"
    (out / "artifacts" / "mine").mkdir(parents=True)
    (out / "artifacts" / "mine" / "own.png").write_bytes(png)
    os.symlink(other, out / "artifacts" / "linked")
    os.symlink(other / "leak_maps.png", out / "artifacts" / "mine" / "leak.png")
    report = {"clean": {"artifacts": ["artifacts/mine/own.png", "artifacts/mine/leak.png",
                                      "artifacts/linked/leak_maps.png", "artifacts/../audit/artifacts/mine/own.png"]}}
    gallery = build_gallery(report, out)
    assert gallery.shown == 1 and dict(gallery.files["clean"])["artifacts/mine/own.png"] == len(png)
    assert {rel for rel, size in gallery.files["clean"] if size is not None} == {"artifacts/mine/own.png"}


# -- card keys that name a repository, a path or a kernel ---------------------------------------

def _vit() -> dict:
    return {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "architectures": ["ViTForImageClassification"],
            "_name_or_path": None}


def _card(config: dict) -> dict:
    return {"format": "safetensors", "arch": "hf", "num_classes": 10, "options": {"config": config}}


def _timm_wrapper(**extra) -> dict:
    return _card({"model_type": "timm_wrapper", "architecture": "resnet18", "num_classes": 10, **extra})


HOSTILE_CARDS = {
    "attn_implementation": _card({**_vit(), "attn_implementation": "kernels-community/flash-attn2"}),
    "_attn_implementation": _card({**_vit(), "_attn_implementation": "kernels-community/flash-attn2"}),
    "name_or_path": _card({**_vit(), "_name_or_path": "someone/remote-vit"}),
    "auto_map": _card({**_vit(), "auto_map": {"AutoModelForImageClassification": "evil--repo.Model"}}),
    "backbone": _card({**_vit(), "backbone": "hf-hub:timm/resnet50"}),
    "value_with_a_repo": _card({**_vit(), "hidden_act": "kernels-community/activation"}),
    "unknown_key": _card({**_vit(), "custom_loader": "x"}),
    "hf_hub_architecture": _timm_wrapper(architecture="hf-hub:timm/resnet18.a1_in1k"),
    "local_dir_architecture": _timm_wrapper(architecture="local-dir:/etc"),
    "checkpoint_path": _timm_wrapper(model_args={"checkpoint_path": "/etc/passwd"}),
    "pretrained_cfg_overlay": _timm_wrapper(model_args={"pretrained_cfg_overlay": {"file": "/etc/config.json"}}),
    "pretrained_cfg": _timm_wrapper(pretrained_cfg={"hf_hub_id": "timm/resnet18.a1_in1k"}),
    "nested_kernel": _card({"model_type": "siglip", "architectures": ["SiglipForImageClassification"],
                            "vision_config": {"attn_implementation": "kernels-community/flash-attn2"}}),
    "timm_arch_source": {"format": "safetensors", "arch": "timm:hf-hub:timm/resnet18.a1_in1k", "num_classes": 10},
    "timm_arch_path": {"format": "safetensors", "arch": "timm:local-dir:/etc", "num_classes": 10},
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CARDS))
def test_card_keys_naming_a_repo_path_or_kernel_are_refused_before_loading(client, config, monkeypatch, name):
    monkeypatch.setattr(uploads, "check_upload", lambda *a, **k: pytest.fail("the sandbox was asked to load it"))
    with open(DEMO / "digits_cnn.pt", "rb") as checkpoint:
        data = {"checkpoint": (checkpoint, "m.safetensors"), "card": json.dumps(HOSTILE_CARDS[name])}
        resp = client.post("/v1/models", headers=auth(), content_type="multipart/form-data", data=data)
    assert assert_error_body(resp, 422)["code"] == "model_card_error"
    assert client.get("/v1/models", headers=auth()).json["total"] == 0
    assert not list((config.storage_dir / "models").glob("*"))  # not even stored


def test_plain_family_keys_are_accepted():
    assert ModelCard.from_dict(_card(_vit())).options["config"]["hidden_size"] == 32
    assert ModelCard.from_dict(_timm_wrapper(model_args={"drop_rate": 0.1}, label_names=["a b/c"] * 10))
    with pytest.raises(ModelCardError, match="not a key of a 'vit' config"):
        ModelCard.from_dict(_card({**_vit(), "trust_remote_code": True}))


# -- the upload-check pool and the per-tenant limit ---------------------------------------------

@pytest.fixture()
def pool_client(config, store, dispatcher, monkeypatch):
    """One check slot, a short wait, one check per tenant; the check itself is not run (spied)."""
    ran: list[str] = []
    monkeypatch.setattr(uploads, "check_upload", lambda *a, **k: ran.append("check") or {})
    monkeypatch.setattr(uploads, "_seen", set())
    cfg = replace(config, upload_checks=1, upload_queue_s=0.6,
                  tenant_limits=LimitsTable(TenantLimits(max_upload_checks=1)))
    app = create_app(cfg, dispatcher=dispatcher, store=store)
    app.config["TESTING"] = True
    return app.test_client(), UploadCheckPool(store, slots=1, wait_s=0.6, check_s=cfg.upload_check_s), ran


def test_a_tenant_over_its_upload_checks_gets_429_and_nothing_is_checked(pool_client, config, store):
    client, pool, ran = pool_client
    with pool.turn("alice", TenantLimits(max_upload_checks=1)):  # alice's other upload is being checked
        resp = upload_demo(client)
        body = assert_error_body(resp, 429, "tenant_limit")
        assert body["details"]["limit"] == "max_upload_checks" and int(resp.headers["Retry-After"]) >= 1
    assert ran == [] and client.get("/v1/models", headers=auth()).json["total"] == 0
    assert not list((config.storage_dir / "models").glob("*"))
    assert upload_demo(client).status_code == 201 and ran == ["check"]  # its turn has ended


def test_a_check_that_waits_too_long_gets_503_with_retry_after(pool_client, config):
    client, pool, ran = pool_client
    with pool.turn("carol", TenantLimits()):  # the only slot is busy with another tenant's check
        started = time.monotonic()
        resp = upload_demo(client, "bob")
        waited = time.monotonic() - started
    body = assert_error_body(resp, 503, "upload_queue_full")
    assert 0.5 <= waited < 10 and int(resp.headers["Retry-After"]) >= 1 and body["details"]["waited_s"] == 0.6
    assert ran == [] and client.get("/v1/models", headers=auth("bob")).json["total"] == 0


def test_waiting_checks_get_the_slot_oldest_first(store):
    pool = UploadCheckPool(store, slots=1, wait_s=20, check_s=60)
    order: list[str] = []

    def check(tenant: str) -> None:
        with pool.turn(tenant, TenantLimits()):
            order.append(tenant)

    with pool.turn("holder", TenantLimits()):
        threads = []
        for tenant in ("first", "second", "third"):
            threads.append(threading.Thread(target=check, args=(tenant,)))
            threads[-1].start()
            time.sleep(0.3)  # each joins the line after the previous one
    for t in threads:
        t.join(timeout=30)
    assert order == ["first", "second", "third"]
    with pytest.raises(UploadQueueFull):
        with pool.turn("a", TenantLimits()), UploadCheckPool(store, slots=1, wait_s=0.3, check_s=60).turn(
                "b", TenantLimits()):
            pass


@pytest.mark.slow
def test_the_upload_cache_is_per_tenant(client, monkeypatch):
    """A second tenant uploading the same file is checked again, so its answer takes as long as the
    first one's and says nothing about what others uploaded."""
    real, checks = uploads.check_upload, []
    monkeypatch.setattr(uploads, "_seen", set())
    monkeypatch.setattr(uploads, "check_upload", lambda *a, **k: checks.append(1) or real(*a, **k))
    timings = {}
    for tenant in ("alice", "bob", "alice"):
        started = time.monotonic()
        assert upload_demo(client, tenant).status_code in (200, 201)
        timings.setdefault(tenant, []).append(time.monotonic() - started)
    assert len(checks) == 2  # alice's and bob's first uploads; alice's second is hers, already checked
    first, second = timings["alice"][0], timings["bob"][0]
    assert second > 0.3 * first, timings  # the same order of time (a cache hit took 0.02 s for ~5 s)


# -- paths over the OS limits -------------------------------------------------------------------

@pytest.mark.parametrize("dataset", [
    {"kind": "npz", "path": "a" * 300},
    {"kind": "npz", "path": "/".join(["abcde"] * 1000)},
    {"kind": "imagefolder", "path": "d/" + "b" * 256},
    {"kind": "npz", "path": "/" + "c/" * 3000},
])
def test_paths_over_the_os_limits_are_422_invalid_path(client, config, store, dispatcher, model_id, dataset):
    config.data_roots[0].mkdir(parents=True, exist_ok=True)
    body = assert_error_body(post_audit(client, audit_body(model_id, dataset=dataset)), 422, "invalid_path")
    assert len(body["message"]) < 300
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Audit)) == 0
    assert dispatcher.sent == []
    sched = client.post("/v1/schedules", headers=auth(), json={**audit_body(model_id, dataset=dataset),
                                                               "cron": "0 2 * * *"})
    assert_error_body(sched, 422, "invalid_path")

