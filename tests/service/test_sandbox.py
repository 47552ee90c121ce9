"""The sandbox around uploaded models, tried as a hostile model would: what it can see, write,
reach and use, and that the service fails closed when the sandbox cannot start."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from service.sandboxing import make_sandbox
from service.store import Audit, Model
from tests.service.conftest import DEMO, assert_error_body, audit_body, auth, post_audit, upload_demo
from worker import sandbox as sandbox_mod
from worker.sandbox import Sandbox, SandboxFailed, SandboxJob, SandboxLimits, SandboxMode, SandboxUnavailable
from worker.tasks import execute_audit

# What the probe child tries; it reports every outcome on the message pipe.
PROBE = textwrap.dedent("""
    import json, os, socket, sys
    fd = int(sys.argv[1])
    out = {}
    def attempt(name, fn):
        try:
            out[name] = ["ok", str(fn())[:200]]
        except BaseException as exc:
            out[name] = ["refused", type(exc).__name__]
    job = json.loads(sys.stdin.read())
    attempt("write_target", lambda: open(job["target"], "r+b").write(b"PWNED"))
    attempt("create_marker", lambda: open(job["marker"], "wb").write(b"x"))
    attempt("read_store", lambda: open(job["store"], "rb").read(16))
    attempt("read_other_model", lambda: open(job["other_model"], "rb").read(16))
    attempt("list_storage", lambda: os.listdir(job["storage"]))
    attempt("redis", lambda: socket.create_connection(("127.0.0.1", 6379), timeout=2))
    attempt("pg_socket", lambda: os.listdir("/var/run/postgresql"))
    attempt("write_out", lambda: open("/tmp/out/ok.txt", "w").write("fine"))
    attempt("read_input", lambda: open("/tmp/in/model.pt", "rb").read(4))
    attempt("secret_env", lambda: os.environ["ROBUSTAUDIT_API_TOKENS"])
    attempt("see_host_processes", lambda: len([p for p in os.listdir("/proc") if p.isdigit()]))
    attempt("big_alloc", lambda: len(bytearray(3 << 30)))
    os.write(fd, (json.dumps({"result": out}) + "\\n").encode())
""")


@pytest.fixture()
def probe_child(monkeypatch, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    monkeypatch.setattr(sandbox_mod, "child_argv", lambda fd: [sys.executable, "/tmp/in/probe.py", str(fd)])
    return script


def test_bwrap_confines_the_child(probe_child, tmp_path, monkeypatch):
    """Read-only filesystem, hidden service files, no network, no secrets, bounded memory."""
    monkeypatch.setenv("ROBUSTAUDIT_API_TOKENS", "alice:secret")
    home, storage = tmp_path / "home", tmp_path / "home" / "storage"
    (storage / "models").mkdir(parents=True)
    store_file = home / "store.sqlite"
    store_file.write_bytes(b"SQLite format 3\0")
    other = storage / "models" / "other-tenant.pt"
    other.write_bytes(b"secret weights")
    target = tmp_path / "outside" / "target.bin"
    target.parent.mkdir()
    target.write_bytes(b"original")
    out = tmp_path / "out"
    out.mkdir()
    job = SandboxJob("probe", {}, inputs={"model.pt": DEMO / "digits_cnn.pt", "probe.py": probe_child},
                     output_dir=out)
    sandbox = Sandbox(SandboxMode.BWRAP, SandboxLimits(memory_mb=1024, wall_s=60), hide=(home, storage))
    # the probe reads its job from stdin: the paths it should not be able to touch
    monkeypatch.setattr(sandbox_mod.Sandbox, "_paths", lambda self, job: {
        "target": str(target), "marker": str(tmp_path / "outside" / "marker"), "store": str(store_file),
        "other_model": str(other), "storage": str(storage)})
    got = sandbox.run(job).result
    assert got is not None
    for name in ("write_target", "create_marker", "read_store", "read_other_model", "redis", "pg_socket",
                 "secret_env", "big_alloc"):
        assert got[name][0] == "refused", (name, got[name])
    assert got["list_storage"] == ["ok", "[]"]  # an empty tmpfs where the storage was
    assert got["write_out"][0] == "ok" and (out / "ok.txt").read_text() == "fine"
    assert got["read_input"] == ["ok", str(b"\x50\x4b\x03\x04")]
    assert int(got["see_host_processes"][1]) <= 3  # its own PID namespace
    assert target.read_bytes() == b"original"
    assert not (tmp_path / "outside" / "marker").exists()


def test_sandbox_refuses_when_bwrap_cannot_start(monkeypatch):
    monkeypatch.setattr(sandbox_mod, "bwrap_works", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(SandboxUnavailable, match="not run without the sandbox"):
        Sandbox(SandboxMode.BWRAP).run(SandboxJob("check_model", {}))


def test_a_child_that_hangs_is_killed_at_the_wall_limit(monkeypatch, tmp_path):
    script = tmp_path / "hang.py"
    script.write_text("import time\ntime.sleep(600)\n")
    monkeypatch.setattr(sandbox_mod, "child_argv", lambda fd: [sys.executable, "/tmp/in/hang.py"])
    with pytest.raises(SandboxFailed, match="within 2 s") as info:
        Sandbox(SandboxMode.BWRAP, SandboxLimits(wall_s=2)).run(SandboxJob("check_model", {},
                                                                           inputs={"hang.py": script}))
    assert info.value.code == "sandbox_timeout"


def test_garbage_on_the_pipe_is_refused(monkeypatch, tmp_path):
    script = tmp_path / "garbage.py"
    script.write_text("import os, sys\nos.write(int(sys.argv[1]), b'{not json\\n')\n")
    monkeypatch.setattr(sandbox_mod, "child_argv", lambda fd: [sys.executable, "/tmp/in/garbage.py", str(fd)])
    with pytest.raises(SandboxFailed, match="not JSON"):
        Sandbox(SandboxMode.BWRAP, SandboxLimits(wall_s=30)).run(SandboxJob("check_model", {},
                                                                            inputs={"garbage.py": script}))


def test_upload_fails_closed_without_the_sandbox(client, config, monkeypatch):
    from service import uploads

    monkeypatch.setattr(uploads, "_seen", set())  # content checked by an earlier test would not be checked again
    monkeypatch.setattr(sandbox_mod, "bwrap_works", lambda: "bubblewrap (bwrap) is not installed")
    body = assert_error_body(upload_demo(client), 503, "sandbox_unavailable")
    assert "not run without the sandbox" in body["message"]
    assert client.get("/v1/models", headers=auth()).json["items"] == []
    assert not list((config.storage_dir / "models").glob("*"))  # the file is not kept


def test_audit_fails_closed_without_the_sandbox(client, config, model_id, monkeypatch):
    audit_id = post_audit(client, audit_body(model_id)).json["id"]
    monkeypatch.setattr(sandbox_mod, "bwrap_works", lambda: "bubblewrap (bwrap) is not installed")
    assert execute_audit(config, audit_id).value == "failed"
    got = client.get(f"/v1/audits/{audit_id}", headers=auth()).json
    assert got["error"]["code"] == "sandbox_unavailable" and got["report"] is None


class _InForward(torch.nn.Module):
    """Maps a file writable and overwrites its first bytes in ``forward``."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(1024, 10)
        self.path = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.path, shared=True, size=8, dtype=torch.uint8)
        t.fill_(65)  # used below: TorchScript drops dead code
        return self.fc(x.flatten(1)) + 0.0 * t.sum()


class _AtLoad(torch.nn.Module):
    """The same in ``__setstate__``, which TorchScript runs while the file is being loaded."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.path = target
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10]

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        t = torch.from_file(self.path, shared=True, size=8, dtype=torch.uint8)
        self.seen = int(t.fill_(65).sum())


def _scripted_from_file(target: Path, tmp_path: Path, *, at_load: bool) -> Path:
    module = torch.jit.script((_AtLoad if at_load else _InForward)(str(target)))
    path = tmp_path / ("at_load.pt" if at_load else "in_forward.pt")
    torch.jit.save(module, str(path))
    return path


def _upload(client, path: Path, card: dict, tenant: str = "alice", kind: str | None = None):
    data = {"checkpoint": (path.open("rb"), path.name), "card": json.dumps(card)}
    if kind is not None:
        data["kind"] = kind
    return client.post("/v1/models", headers=auth(tenant), content_type="multipart/form-data", data=data)


CARD = {"name": "hostile", "format": "torchscript", "num_classes": 10, "input_size": [1, 32, 32],
        "mean": [0.5], "std": [0.5]}


@pytest.mark.parametrize("at_load", [False, True])
def test_scripted_model_cannot_write_a_server_file(client, config, tmp_path, at_load):
    target = tmp_path / "victim.bin"
    target.write_bytes(b"original-content")
    marker = tmp_path / "created.bin"
    path = _scripted_from_file(marker if at_load else target, tmp_path, at_load=at_load)
    resp = _upload(client, path, CARD)
    assert target.read_bytes() == b"original-content"
    assert not marker.exists()
    body = assert_error_body(resp, 422)  # the format checks refuse aten::from_file, and __setstate__
    assert ("__setstate__" if at_load else "aten::from_file") in body["message"]
    assert str(config.storage_dir) not in json.dumps(body)
    assert client.get("/v1/models", headers=auth()).json["items"] == []


def test_over_the_api_models_are_ids_never_paths(client, model_id, dispatcher):
    for sur in ({"model": "/etc/passwd"}, {"card": "/etc/passwd"}, {"model_id": model_id, "model": "x.pt"}):
        body = post_audit(client, audit_body(model_id, suites={"attacks": {"transfer": sur}}, gates=[]))
        err = assert_error_body(body, 422, "invalid_spec")
        assert "over the API a model is named by model_id" in err["message"]
        assert "passwd" not in err["message"]
    for gen in ({"generator": "/etc/passwd"}, {"card": {"arch": "digits_cgen"}}):
        body = post_audit(client, audit_body(model_id, suites={"perturbation": {"generator_layers": gen}}, gates=[]))
        assert "generator_id" in assert_error_body(body, 422, "invalid_spec")["message"]
    # a classifier id is not a generator
    body = post_audit(client, audit_body(model_id, suites={"perturbation": {"generator_layers": {
        "generator_id": model_id}}}, gates=[]))
    assert "no registered generator" in assert_error_body(body, 422, "invalid_spec")["message"]
    assert dispatcher.sent == []


def test_a_registered_generator_is_referenced_by_id(client, store, model_id, dispatcher):
    card = json.loads((DEMO / "digits_generator.card.json").read_text())
    resp = _upload(client, DEMO / "digits_generator.safetensors", card, kind="generator")
    assert resp.status_code == 201, resp.json
    assert resp.json["kind"] == "generator"
    gen_id = resp.json["id"]
    # bob cannot use alice's generator
    bob_model = upload_demo(client, tenant="bob").json["id"]
    body = post_audit(client, audit_body(bob_model, suites={"perturbation": {"generator_layers": {
        "generator_id": gen_id}}}, gates=[]), tenant="bob")
    assert_error_body(body, 422, "invalid_spec")
    resp = post_audit(client, audit_body(model_id, suites={"perturbation": {"generator_layers": {
        "generator_id": gen_id}}}, gates=[]))
    assert resp.status_code == 202, resp.json
    with store.session() as s:
        stored = s.get(Audit, resp.json["id"]).request["suites"]["perturbation"]["generator_layers"]
        path = s.get(Model, gen_id).path
    assert stored["generator_id"] == gen_id and stored["generator"] is None and stored["card"] is None
    assert path not in json.dumps(stored)
    # a generator is not a model to audit
    err = assert_error_body(post_audit(client, audit_body(gen_id)), 422, "invalid_spec")
    assert "not a classifier" in err["message"]


def test_reports_and_errors_name_ids_not_server_paths(client, config, model_id, store):
    sur = upload_demo(client, name="digits_cnn_pgd").json["id"]
    body = audit_body(model_id, suites={"clean": {}}, gates=[])
    audit_id = post_audit(client, body).json["id"]
    assert execute_audit(config, audit_id).value == "succeeded"
    report = client.get(f"/v1/audits/{audit_id}/report", headers=auth()).json
    text = json.dumps(report)
    assert str(config.storage_dir) not in text and str(config.home) not in text
    assert report["audit"]["spec"]["model"].startswith(model_id)
    # a surrogate whose card no longer fits fails the audit in the sandbox, naming ids only
    with store.session() as s:
        s.get(Model, sur).card = {**s.get(Model, sur).card, "input_size": [1, 30, 30]}
    body = audit_body(model_id, suites={"attacks": {"transfer": {"model_id": sur}}}, gates=[],
                      dataset={"kind": "builtin", "name": "digits", "n_samples": 4})
    audit_id = post_audit(client, body).json["id"]
    assert execute_audit(config, audit_id).value == "failed"
    error = client.get(f"/v1/audits/{audit_id}", headers=auth()).json["error"]
    assert str(config.storage_dir) not in json.dumps(error), error


def test_make_sandbox_hides_the_service_home(config):
    sandbox = make_sandbox(config, wall_s=10)
    cmd = sandbox_mod.bwrap_command(SandboxJob("check_model", {}), 3, hide=sandbox.hide)
    tmpfs = {cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--tmpfs"}
    assert str(Path(config.home).resolve()) in tmpfs or any(
        str(Path(config.home).resolve()).startswith(t + os.sep) for t in tmpfs)
    assert {"--unshare-net", "--unshare-pid"} <= set(cmd) or "--unshare-all" in cmd
    assert "--clearenv" in cmd and "--die-with-parent" in cmd
    assert make_sandbox(config, wall_s=10, gpu=True).limits.memory_mb is None


def test_a_child_over_its_resident_memory_limit_is_killed(monkeypatch, tmp_path):
    script = tmp_path / "hog.py"
    script.write_text("import time\nblocks = [b'x' * (64 << 20) for _ in range(24)]\ntime.sleep(60)\n")
    monkeypatch.setattr(sandbox_mod, "child_argv", lambda fd: [sys.executable, "/tmp/in/hog.py"])
    limits = SandboxLimits(memory_mb=None, wall_s=60, rss_mb=400)
    with pytest.raises(SandboxFailed, match="more than 400 MB") as info:
        Sandbox(SandboxMode.BWRAP, limits).run(SandboxJob("check_model", {}, inputs={"hog.py": script}))
    assert info.value.code == "sandbox_limit"


def test_a_service_home_inside_the_code_folder_stays_hidden(probe_child, tmp_path, monkeypatch):
    """The embedded default keeps its store and storage in ./var, inside the repository that the
    sandbox binds back read-only: the home's tmpfs must land on top of that bind."""
    import shutil
    import uuid

    home = Path(sandbox_mod.__file__).resolve().parents[1] / "var" / f"sandbox-test-{uuid.uuid4().hex[:8]}"
    storage = home / "storage"
    try:
        (storage / "models").mkdir(parents=True)
        store_file = home / "store.sqlite"
        store_file.write_bytes(b"SQLite format 3\0")
        other = storage / "models" / "other-tenant.pt"
        other.write_bytes(b"secret weights")
        monkeypatch.setattr(sandbox_mod.Sandbox, "_paths", lambda self, job: {
            "target": str(store_file), "marker": str(home / "marker"), "store": str(store_file),
            "other_model": str(other), "storage": str(storage)})
        job = SandboxJob("probe", {}, inputs={"model.pt": DEMO / "digits_cnn.pt", "probe.py": probe_child},
                         data_roots=(storage / "data",))
        got = Sandbox(SandboxMode.BWRAP, SandboxLimits(memory_mb=1024, wall_s=60), hide=(home, storage)).run(job).result
        assert got is not None
        for name in ("write_target", "read_store", "read_other_model"):
            assert got[name][0] == "refused", (name, got[name])
        assert got["list_storage"] == ["ok", "[]"]  # an empty tmpfs (a marker written there stays in it)
        assert store_file.read_bytes() == b"SQLite format 3\0" and not (home / "marker").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)
