"""The sandbox is not the only wall, tried as a hostile model would: who it runs as (this machine
runs the tests as root), where the job store is, a stderr that never ends, warnings in a loop, and
failures whose text would tell a client which files exist on the server."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import uuid
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from service.sandboxing import SandboxRefused, make_sandbox, run_job, store_paths
from tests.service.conftest import assert_error_body, auth
from worker import sandbox as sandbox_mod
from worker import sandbox_child
from worker.sandbox import STDERR_TAIL_BYTES, Sandbox, SandboxFailed, SandboxJob, SandboxLimits, SandboxMode

WHOAMI = textwrap.dedent("""
    import json, os, sys
    fd = int(sys.argv[1])
    job = json.loads(sys.stdin.readline())
    def attempt(fn):
        try:
            return ["ok", str(fn())[:100]]
        except BaseException as exc:
            return ["refused", type(exc).__name__]
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    out = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
           "cap_eff": status["CapEff"].strip(), "shadow": attempt(lambda: open("/etc/shadow").read(10)),
           "setuid0": attempt(lambda: os.setuid(0)),
           "env": {k: v for k, v in os.environ.items() if "OFFLINE" in k},
           "files": {p: attempt(lambda p=p: open(p, "rb").read(16)) for p in job.get("payload", {}).get("read", [])}}
    os.write(fd, (json.dumps({"result": out}) + "\\n").encode())
""")


@pytest.fixture()
def whoami(monkeypatch, tmp_path):
    script = tmp_path / "whoami.py"
    script.write_text(WHOAMI)
    monkeypatch.setattr(sandbox_mod, "child_argv", lambda fd: [sys.executable, "/tmp/in/whoami.py", str(fd)])
    return script


def test_the_child_is_nobody_even_when_the_service_is_root(config, whoami):
    got = make_sandbox(config, wall_s=60).run(SandboxJob("probe", {}, inputs={"whoami.py": whoami})).result
    assert got is not None
    assert (got["uid"], got["euid"], got["gid"]) == (65534, 65534, 65534) and 0 not in got["groups"]
    assert got["cap_eff"] == "0000000000000000"  # no capability left
    assert got["shadow"][0] == "refused" and got["setuid0"][0] == "refused"
    assert got["env"] == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if os.geteuid() == 0:
        assert open("/etc/shadow").read(1)  # the service itself could read it: the drop is what refuses it
    with pytest.raises(ValueError, match="never runs as uid or gid 0"):
        Sandbox(user=(0, 0))


def test_the_job_store_is_hidden_wherever_its_url_points(config, whoami, tmp_path):
    elsewhere, broker_dir = tmp_path / "db-elsewhere", tmp_path / "broker-elsewhere"
    elsewhere.mkdir()
    broker_dir.mkdir()
    (elsewhere / "jobs.sqlite").write_bytes(b"SQLite format 3\0jobs")
    (elsewhere / "jobs.sqlite-wal").write_bytes(b"wal of the jobs")
    (broker_dir / "broker.sqlite").write_bytes(b"SQLite format 3\0broker")
    # a store in the code's own folder, which the sandbox must see: its files are masked instead
    in_code = Path(sandbox_mod.__file__).resolve().parents[1] / f".store-{uuid.uuid4().hex[:8]}.sqlite"
    in_code.write_bytes(b"SQLite format 3\0in code")
    try:
        cfg = replace(config, database_url=f"sqlite:///{elsewhere / 'jobs.sqlite'}",
                      broker_url=f"sqla+sqlite:///{broker_dir / 'broker.sqlite'}")
        reads = [str(elsewhere / "jobs.sqlite"), str(elsewhere / "jobs.sqlite-wal"), str(broker_dir / "broker.sqlite")]
        job = SandboxJob("probe", {"read": reads}, inputs={"whoami.py": whoami})
        got = make_sandbox(cfg, wall_s=60).run(job).result
        assert all(got["files"][p][0] == "refused" for p in reads), got["files"]
        masked = replace(config, database_url=f"sqlite:///{in_code}")
        assert store_paths(masked)[1][0] == in_code
        got = make_sandbox(masked, wall_s=60).run(SandboxJob("probe", {"read": [str(in_code)]},
                                                             inputs={"whoami.py": whoami})).result
        assert got["files"][str(in_code)] in (["ok", "b''"], ["refused", "PermissionError"])
    finally:
        in_code.unlink()


def _script(tmp_path: Path, name: str, body: str, monkeypatch) -> dict[str, Path]:
    script = tmp_path / name
    script.write_text(textwrap.dedent(body))
    monkeypatch.setattr(sandbox_mod, "child_argv", lambda fd: [sys.executable, f"/tmp/in/{name}", str(fd)])
    return {name: script}


def test_a_stderr_flood_is_bounded_at_the_source(tmp_path, monkeypatch):
    tails: list[sandbox_mod.StderrTail] = []

    class Recorded(sandbox_mod.StderrTail):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            tails.append(self)

    monkeypatch.setattr(sandbox_mod, "StderrTail", Recorded)
    monkeypatch.setattr(sandbox_mod.tempfile, "TemporaryFile", lambda *a, **k: pytest.fail("stderr went to a file"))
    inputs = _script(tmp_path, "flood.py", """
        import os, sys
        chunk = b"W" * (1 << 20)
        for _ in range(64):
            sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        os.write(int(sys.argv[1]), b'{"result": {"ok": true}}\\n')
    """, monkeypatch)
    got = Sandbox(SandboxMode.BWRAP, SandboxLimits(wall_s=60)).run(SandboxJob("flood", {}, inputs=inputs))
    assert got.result == {"ok": True} and got.stderr_bytes == 64 << 20
    assert len(tails) == 1 and len(tails[0]) == STDERR_TAIL_BYTES  # 256 KiB kept of 64 MiB


def test_a_dying_childs_words_stay_in_the_log(tmp_path, monkeypatch, caplog):
    inputs = _script(tmp_path, "dies.py", """
        import sys
        sys.stderr.write("FileNotFoundError: Config file not found: /etc/config.json\\n")
        sys.exit(3)
    """, monkeypatch)
    with pytest.raises(SandboxFailed) as info:
        Sandbox(SandboxMode.BWRAP, SandboxLimits(wall_s=60)).run(SandboxJob("dies", {}, inputs=inputs))
    assert "/etc" not in info.value.message and info.value.code == "sandbox_failed"
    assert "/etc/config.json" in caplog.text  # the operator still sees it


@pytest.mark.parametrize("error, code", [
    ({"code": "model_load_error", "message": "Config file not found: /etc/config.json", "unexpected": True},
     "model_load_error"),
    ({"code": "internal_error", "message": "FileNotFoundError: /srv/other-tenant/x.pt"}, "internal_error"),
    ({"code": "model_out_of_memory", "message": "RuntimeError: DefaultCPUAllocator at /srv/x", "unexpected": True},
     "model_out_of_memory"),
    ({"code": "made_up", "message": "/etc/passwd exists", "unexpected": True}, "internal_error"),
])
def test_failures_from_the_child_carry_our_message(tmp_path, monkeypatch, error, code):
    inputs = _script(tmp_path, "says.py", f"""
        import os, sys
        os.write(int(sys.argv[1]), {(json.dumps({"error": error}) + chr(10))!r}.encode())
    """, monkeypatch)
    with pytest.raises(SandboxRefused) as info:
        run_job(Sandbox(SandboxMode.BWRAP, SandboxLimits(wall_s=60)), SandboxJob("says", {}, inputs=inputs))
    assert info.value.code == code and "/" not in info.value.message.replace("(", "")


def _raise_in_torch() -> None:
    torch.nn.Linear(3, 2)(torch.zeros(2, 2))  # a model's shape error, raised while torch runs it


@pytest.mark.parametrize("exc, op, code", [
    (MemoryError(), "audit", "model_out_of_memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"), "audit",
     "model_out_of_memory"),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"), "check_model", "model_out_of_memory"),
    (FileNotFoundError("Config file not found: /etc/config.json"), "check_model", "model_load_error"),
    (None, "audit", "model_runtime_error"),
    (ZeroDivisionError("x"), "audit", "internal_error"),
])
def test_failure_codes(exc, op, code):
    try:
        if exc is None:
            _raise_in_torch()
        raise exc
    except BaseException as raised:  # the child sees it the same way, traceback included
        assert sandbox_child.failure_code(raised, op) == code


class _Warns(torch.nn.Module):
    """Warns 24 times per forward with a 1 MiB message (TorchScript's aten::warn)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(1024, 10)
        self.message = "w" * (1 << 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(24):
            warnings.warn(self.message, stacklevel=2)
        return self.fc(x.flatten(1))


@pytest.mark.slow
def test_model_warnings_are_counted_not_stored(tmp_path, capfd):
    with warnings.catch_warnings():  # the child's counter, in this process (its filters are restored after)
        counter = sandbox_child.WarningCounter()
        counter.install()
        for _ in range(24):
            warnings.warn("w" * (1 << 20), stacklevel=2)
    assert counter.count == 24 and len(capfd.readouterr().err) < 1000
    # a scripted model (aten::warn; TorchScript warns once per call site and run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(_Warns())
    path = tmp_path / "warns.pt"
    scripted.save(str(path))
    card = {"format": "torchscript", "num_classes": 10, "input_size": [1, 32, 32], "mean": [0.5], "std": [0.5]}
    job = SandboxJob("check_model", {"checkpoint": "warns.pt", "card": card}, inputs={"warns.pt": path})
    got = Sandbox(SandboxMode.BWRAP, SandboxLimits(wall_s=120)).run(job)
    assert got.error is None and got.warnings >= 1
    assert got.stderr_bytes < 64 << 10  # a 1 MiB message each time, none of it written


class _Hog(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = torch.ones([1 << 40], dtype=torch.uint8)  # a terabyte: torch raises RuntimeError, not MemoryError
        return self.fc(x.flatten(1)) + big[0].float()


@pytest.mark.slow
def test_a_model_out_of_memory_is_a_typed_failure_in_our_words(client, tmp_path):
    path = tmp_path / "hog.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_Hog()).save(str(path))
    card = {"format": "torchscript", "num_classes": 10, "input_size": [1, 32, 32], "mean": [0.5], "std": [0.5]}
    with open(path, "rb") as f:
        resp = client.post("/v1/models", headers=auth(), content_type="multipart/form-data",
                           data={"checkpoint": (f, "hog.pt"), "card": json.dumps(card)})
    body = assert_error_body(resp, 422, "model_out_of_memory")
    assert "alloc" not in body["message"] and "bytes" not in body["message"]
    assert client.get("/v1/models", headers=auth()).json["total"] == 0
