"""ONNX models with external data through ``POST /v1/models``, as a client sends them: the exporter's two
files in a zip, or as the parts ``checkpoint`` and ``external_data``; and their hostile variants.

Every sandboxed check runs under ``strace -f`` (wrapped around the sandbox's command line), so the test
sees every file the sandboxed loader tries to open: a hostile reference must be refused (422, the JSON
error body) without any attempt to open the file it names, and nothing is registered.
"""

from __future__ import annotations

import io
import json
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")
pytest.importorskip("onnxscript")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import worker.sandbox as sandbox_module  # noqa: E402
from service.app import create_app  # noqa: E402
from service.config import Config, hash_token  # noqa: E402
from service.store import Store  # noqa: E402
from tests.onnx_exports import ARCHS, card, exported  # noqa: E402
from tests.service.conftest import RecordingDispatcher  # noqa: E402
from worker.sandbox import bwrap_works  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("strace") is None or bwrap_works() is not None,
                                 reason="needs strace and a working bubblewrap")]
AUTH = {"Authorization": "Bearer tok"}
MARKER = "marker-of-another-tenant.bin"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """(client, strace log folder, the marker's path, a ``limit_prefix`` that runs the sandbox under strace)."""
    home = tmp_path_factory.mktemp("onnx-api")
    config = Config(home=home, database_url=f"sqlite:///{home / 'store.sqlite'}", broker_url="memory://",
                    storage_dir=home / "storage", data_roots=(home / "storage" / "data",),
                    token_hashes={hash_token("tok"): "alice"}, max_upload_mb=128.0, device="cpu")
    store = Store(config.database_url)
    store.migrate()
    other = home / "storage" / "models"
    other.mkdir(parents=True)
    marker = other / MARKER  # where another tenant's checkpoint would be
    marker.write_bytes(bytes(1 << 16))
    logs = home / "strace"
    logs.mkdir()
    original = sandbox_module.limit_prefix
    counter = iter(range(10**6))

    def traced(limits):
        return ["strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=open,openat,openat2,creat", "-o",
                str(logs / f"check-{next(counter):03d}.log"), *original(limits)]

    app = create_app(config, dispatcher=RecordingDispatcher(), store=store)
    yield app.test_client(), logs, marker, traced
    store.dispose()


def post(client, checkpoint: tuple[bytes, str], card_: dict, data: list[tuple[bytes, str]] = ()):
    form = {"checkpoint": (io.BytesIO(checkpoint[0]), checkpoint[1]), "card": json.dumps(card_)}
    if data:
        form["external_data"] = [(io.BytesIO(b), n) for b, n in data]
    return client.post("/v1/models", headers=AUTH, content_type="multipart/form-data", data=form)


def parts(arch: str) -> tuple[tuple[bytes, str], list[tuple[bytes, str]]]:
    path = exported(arch)
    return (path.read_bytes(), "model.onnx"), [((path.parent / "model.onnx.data").read_bytes(), "model.onnx.data")]


def zipped(members: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if modes and name in modes:
                info.create_system, info.external_attr = 3, modes[name] << 16
            z.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def opened(logs: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob("*.log")))


@pytest.mark.parametrize("arch", ARCHS)
def test_default_exports_upload_as_a_zip_and_as_two_parts(service, arch: str) -> None:
    client = service[0]
    model, data = parts(arch)
    as_zip = post(client, (zipped({"net/model.onnx": model[0], "net/model.onnx.data": data[0][0]}), "net.zip"),
                  card(arch))
    assert as_zip.status_code == 201, as_zip.get_json()
    as_parts = post(client, model, card(arch), data)
    assert as_parts.status_code == 201, as_parts.get_json()
    assert as_parts.get_json()["format"] == "onnx"
    again = post(client, model, card(arch), data)  # the bundle written from the parts is deterministic
    assert again.status_code == 200 and again.get_json()["id"] == as_parts.get_json()["id"]


def _with(change, arch: str = "cnn") -> bytes:
    """The export's graph (its references unresolved), changed."""
    model = onnx.load_model_from_string(exported(arch).read_bytes())
    change(model)
    return model.SerializeToString()


def _outside(name: str, location: str) -> TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value=location)
    t.external_data.add(key="offset", value="0")
    t.external_data.add(key="length", value="16")
    return t


def _set(model, location: str | None = None, offset: int | None = None, length: int | None = None) -> None:
    tensor = next(t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL)
    for entry in tensor.external_data:
        if entry.key == "location" and location is not None:
            entry.value = location
        if entry.key == "offset" and offset is not None:
            entry.value = str(offset)
        if entry.key == "length" and length is not None:
            entry.value = str(length)


def hostile_cases(marker: Path) -> dict[str, tuple[dict, str]]:
    """name -> (request, a word of the refusal)."""
    model, data = parts("cnn")
    size = len(data[0][0])

    def two(change) -> dict:
        return {"checkpoint": (_with(change), "model.onnx"), "data": data}

    def sparse(m) -> None:
        values = _outside("sv", f"../../storage/models/{MARKER}")
        m.graph.node.append(helper.make_node("Constant", [], ["unused"], sparse_value=helper.make_sparse_tensor(
            values, numpy_helper.from_array(np.arange(4, dtype=np.int64), "si"), [8])))

    def training(m) -> None:
        init = helper.make_graph([], "init", [], [], initializer=[_outside("t", f"../{MARKER}")])
        m.training_info.append(onnx.TrainingInfoProto(initialization=init))

    return {
        "dotdot": (two(lambda m: _set(m, location=f"../../storage/models/{MARKER}")), "names a folder"),
        "absolute": (two(lambda m: _set(m, location=str(marker))), "names a folder"),
        "offset_past_end": (two(lambda m: _set(m, offset=size + 1)), "refused before reading"),
        "length_2_pow_40": (two(lambda m: _set(m, length=2**40)), "not the tensor's size"),
        "sparse_tensor_attribute": (two(sparse), "sparse values"),
        "training_info": (two(training), "training_info[0]"),
        "symlink_member": ({"checkpoint": (zipped({"model.onnx": model[0], "model.onnx.data": str(marker).encode()},
                                                  {"model.onnx.data": stat.S_IFLNK | 0o777}), "net.zip"), "data": []},
                           "symbolic link"),
        "dotdot_member": ({"checkpoint": (zipped({"model.onnx": model[0], f"../{MARKER}": b""}), "net.zip"),
                           "data": []}, "not plain"),
        "dotdot_part_name": ({"checkpoint": model, "data": [(data[0][0], f"../{MARKER}")]}, "refused"),
    }


def test_hostile_external_data_answers_422_and_nothing_outside_is_opened(service, monkeypatch) -> None:
    client, logs, marker, traced = service
    monkeypatch.setattr(sandbox_module, "limit_prefix", traced)
    good = exported("cnn")
    resp = post(client, (zipped({"model.onnx": good.read_bytes(),
                                 "model.onnx.data": (good.parent / "model.onnx.data").read_bytes()}), "traced.zip"),
                card("cnn"))
    assert resp.status_code == 201, resp.get_json()
    assert "/tmp/in/traced.zip" in opened(logs)  # the trace does see the sandboxed loader's opens
    before = {m["id"] for m in client.get("/v1/models", headers=AUTH).get_json()["items"]}
    for name, (request, word) in hostile_cases(marker).items():
        for log in logs.glob("*.log"):
            log.unlink()
        resp = post(client, request["checkpoint"], card("cnn"), request["data"])
        body = resp.get_json()
        assert resp.status_code == 422, (name, body)
        assert set(body) == {"status", "code", "message", "details"}, (name, body)
        assert word in body["message"], (name, body["message"])
        assert str(marker.parent) not in json.dumps(body), (name, body)
        assert MARKER not in opened(logs), (name, [line for line in opened(logs).splitlines() if MARKER in line])
    after = {m["id"] for m in client.get("/v1/models", headers=AUTH).get_json()["items"]}
    assert after == before  # nothing hostile was registered


def test_external_data_part_needs_an_onnx_card(service) -> None:
    client = service[0]
    model, data = parts("cnn")
    resp = post(client, model, {**card("cnn"), "format": "torchscript"}, data)
    assert resp.status_code == 422 and "only with an ONNX checkpoint" in resp.get_json()["message"]


def test_submit_client_sends_the_data_file_beside_an_onnx_model(service, tmp_path: Path, monkeypatch) -> None:
    """``robustaudit submit --model model.onnx``: ``model.onnx.data`` beside it goes as 'external_data'."""
    from service.client import Client

    client = service[0]
    model, data = parts("cnn")
    direct = post(client, model, card("cnn"), data)
    assert direct.status_code in (200, 201), direct.get_json()
    sent: list[bytes] = []

    def through_flask(self, method, path, *, body=None, content_type=None, headers=None):
        sent.append(body)
        resp = client.open(path, method=method, data=body, content_type=content_type, headers=AUTH)
        assert resp.status_code in (200, 201), resp.get_json()
        return resp.get_json()

    monkeypatch.setattr(Client, "request", through_flask)
    card_file = tmp_path / "model.card.json"
    card_file.write_text(json.dumps(card("cnn")))
    registered = Client("http://unused").upload_model(exported("cnn"), card_file)
    assert b'name="external_data"; filename="model.onnx.data"' in sent[0]
    assert registered["id"] == direct.get_json()["id"]  # the same bundle as the two parts sent by hand
