"""Hostile HTTP input, sent as a client would: every refusal is a 4xx with the JSON error body, and
what the request would have done (an audit, a model, a schedule, a file) did not happen.

The first part goes through Flask's test client; the second through a real ``robustaudit api``
(gunicorn with our worker class and config) and raw sockets, for what gunicorn answers itself,
slow clients and interrupted uploads.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from werkzeug.exceptions import ClientDisconnected
from werkzeug.test import EnvironBuilder, run_wsgi_app

from service.api.bounds import MAX_JSON_BYTES, MAX_JSON_DEPTH, json_depth, parse_json_body
from service.api.errors import ApiError
from service.storage import Storage, UploadTooLarge
from tests.service.conftest import DEMO, ROOT, assert_error_body, audit_body, auth, post_audit

INT64_MAX = 2**63 - 1


def _nothing_created(client, dispatcher, config) -> None:
    assert dispatcher.sent == []
    assert client.get("/v1/audits", headers=auth()).json["total"] == 0
    assert client.get("/v1/schedules", headers=auth()).json["total"] == 0
    assert client.get("/v1/models", headers=auth()).json["total"] == 0
    assert not list((config.storage_dir / "models").glob("*"))


def _post_raw(client, text: str, path: str = "/v1/audits", headers=None):
    return client.post(path, headers={**auth(), **(headers or {})}, data=text.encode("utf-8", "surrogatepass"),
                       content_type="application/json")


# --- strings with NUL or lone surrogates -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/audits/%00", "/v1/audits/x/artifacts/%00", "/v1/models/a%00b",
                                  "/v1/schedules/%00/runs", "/v1/audits?label=%00", "/v1/audits?model=x%00",
                                  "/v1/audits?%00=1", "/v1/models?page=1%00"])
def test_nul_in_path_or_query_is_400(client, path):
    body = assert_error_body(client.get(path, headers=auth()), 400, "invalid_string")
    assert "NUL" in body["message"]


@pytest.mark.parametrize("text", [
    '{"model": "m", "dataset": "builtin:digits", "label": "\\ud800"}',
    '{"model": "\\udfff", "dataset": "builtin:digits"}',
    '{"model": "m\\u0000", "dataset": "builtin:digits"}',
    '{"model": "m", "dataset": {"kind": "builtin", "name": "digits\\u0000"}}',
    '{"model": "m", "dataset": "builtin:digits", "gates": ["clean.top1 >= 0.5", "\\ud800"]}',
    '{"model": "m", "dataset": "builtin:digits", "suites": {"clean\\u0000": {}}}',
    '{"model": "m", "dataset": "builtin:digits", "\\ud800": 1}',
])
def test_bad_strings_in_json_bodies_are_400(client, dispatcher, config, text):
    assert_error_body(_post_raw(client, text), 400, "invalid_string")
    assert_error_body(_post_raw(client, text[:-1] + ', "cron": "0 2 * * *"}', "/v1/schedules"), 400,
                      "invalid_string")
    _nothing_created(client, dispatcher, config)


def test_bad_strings_in_a_good_looking_request_create_nothing(client, model_id, dispatcher):
    body = json.dumps(audit_body(model_id, label="ci\u0000"))
    assert_error_body(_post_raw(client, body), 400, "invalid_string")
    body = json.dumps(audit_body(model_id, label="x")).replace('"x"', '"\\ud800"')
    assert_error_body(_post_raw(client, body), 400, "invalid_string")
    assert_error_body(post_audit(client, audit_body(model_id), headers={"Idempotency-Key": "k\x00"}), 400,
                      "invalid_string")
    assert dispatcher.sent == []
    assert post_audit(client, audit_body(model_id)).status_code == 202  # the same request, clean, is accepted


def test_bad_strings_in_multipart_are_400(client, dispatcher, config):
    card = (DEMO / "digits_cnn.card.json").read_bytes()
    ckpt = (DEMO / "digits_cnn.pt").read_bytes()
    cases = [
        {"checkpoint": (io.BytesIO(ckpt), "m\x00.pt"), "card": (io.BytesIO(card), "card.json")},
        {"checkpoint": (io.BytesIO(ckpt), "m.pt"), "card": card.decode().replace('"name"', '"na\\u0000me"', 1),
         "x\x00": "1"},
        {"checkpoint": (io.BytesIO(ckpt), "m.pt"), "card": (io.BytesIO(card), "card.json"), "note": "a\x00"},
    ]
    for data in cases:
        resp = client.post("/v1/models", headers=auth(), content_type="multipart/form-data", data=data)
        assert_error_body(resp, 400, "invalid_string")
    spec = json.dumps({"dataset": "builtin:digits", "label": "\udc00"}, ensure_ascii=True)
    resp = client.post("/v1/audits", headers=auth(), content_type="multipart/form-data",
                       data={"spec": spec, "checkpoint": (io.BytesIO(ckpt), "m.pt"), "card": (io.BytesIO(card), "c")})
    assert_error_body(resp, 400, "invalid_string")
    _nothing_created(client, dispatcher, config)


# --- JSON: size, depth, numbers --------------------------------------------------------------------


def test_json_depth_is_measured_without_parsing():
    assert json_depth('{"a": [1, {"b": "[[[[{{{{"}]}') == 3
    assert json_depth('"\\"[[[["' + "[" * 40) == 40
    assert json_depth("[" * 1_000_000) == 1_000_000  # no RecursionError, even on a million levels


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 1000 + "1" + "}" * 1000,
                                  '{"model": "m", "dataset": ' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
                                  + "}", '{"a": NaN}', '{"a": -Infinity}', '{"a": 1e400}', '{"a": ' + "9" * 5000 + "}",
                                  "[1, 2]", "{", '{"a": "\\x"}'])
def test_bad_json_is_400_invalid_json(client, dispatcher, config, text):
    assert_error_body(_post_raw(client, text), 400, "invalid_json")
    _nothing_created(client, dispatcher, config)


def test_parse_json_body_accepts_what_it_should():
    nested = '{"a":' * (MAX_JSON_DEPTH - 1) + '"x"' + "}" * (MAX_JSON_DEPTH - 1)
    assert parse_json_body(nested, "it")["a"]["a"]
    assert parse_json_body(b'{"seed": 9223372036854775807, "x": 1.5e-300, "s": "\\ud83d\\ude00"}', "it") == {
        "seed": INT64_MAX, "x": 1.5e-300, "s": "\U0001f600"}  # a surrogate pair is one character, and fine
    with pytest.raises(ApiError) as err:
        parse_json_body(b'{"a": "' + b"x" * MAX_JSON_BYTES + b'"}', "it")
    assert err.value.status == 413


def test_json_bodies_over_the_limit_are_413_with_or_without_content_length(app, client, dispatcher, config):
    big = b'{"model": "' + b"x" * (MAX_JSON_BYTES + 10) + b'"}'
    resp = client.post("/v1/audits", headers=auth(), data=big, content_type="application/json")
    assert_error_body(resp, 413, "payload_too_large")
    # chunked: no Content-Length, the server terminates the stream (gunicorn sets this flag)
    environ = EnvironBuilder("/v1/audits", method="POST", headers=auth(), data=big,
                             content_type="application/json").get_environ()
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    app_iter, status, _ = run_wsgi_app(client.application, environ)
    answer = json.loads(b"".join(app_iter))
    assert status.startswith("413") and answer["code"] == "payload_too_large" and answer["details"] == {}
    _nothing_created(client, dispatcher, config)


# --- paths, redirects, the error body ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/audits/" + "a" * 256, "/v1/models/" + "b" * 300,
                                  "/v1/" + "c/" * 2100, "/nowhere/" + "d" * 300, "/v1/audits?label=" + "e" * 5000])
def test_long_paths_are_414(client, path):
    assert_error_body(client.get(path, headers=auth()), 414, "uri_too_long")


def test_a_255_character_component_is_fine(client):
    assert_error_body(client.get("/v1/audits/" + "a" * 255, headers=auth()), 404, "not_found")


def test_no_redirects_and_details_always_present(client):
    for path in ("//v1/models", "/v1//models", "/v1/models/", "/v1/audits/"):
        resp = client.get(path, headers=auth())
        assert resp.status_code in (200, 404) and "Location" not in resp.headers, (path, resp.status_code)
        assert resp.is_json
    body = assert_error_body(client.get("/nowhere", headers=auth()), 404, "not_found")
    assert body["details"] == {}
    body = assert_error_body(client.get("/v1/models"), 401, "unauthorized")
    assert body["details"] == {}


# --- schemas bound their integers and strings -------------------------------------------------------


@pytest.mark.parametrize("query", ["page=100000000000000000000", "page=1000001", "page=0", "page_size=201",
                                   "page_size=0", "page=-1", f"page={2**63}&page_size=200"])
def test_paging_out_of_bounds_is_422(client, query):
    for path in ("/v1/audits", "/v1/models", "/v1/schedules"):
        assert_error_body(client.get(f"{path}?{query}", headers=auth()), 422, "validation_error")


def test_the_last_page_answers(client):
    resp = client.get("/v1/audits?page=1000000&page_size=200", headers=auth())
    assert resp.status_code == 200 and resp.json["items"] == []


@pytest.mark.parametrize("extra", [{"seed": 2**63}, {"seed": 2**70}, {"seed": -1}, {"label": "x" * 201},
                                   {"dataset": {"kind": "builtin", "name": "digits", "seed": 2**70}},
                                   {"suites": {"clean": {"ece_bins": 2**70}}}])
def test_out_of_range_request_fields_are_422(client, model_id, dispatcher, extra):
    assert_error_body(post_audit(client, audit_body(model_id, **extra)), 422)
    assert dispatcher.sent == []


def test_the_largest_seed_is_accepted(client, model_id):
    assert post_audit(client, audit_body(model_id, seed=INT64_MAX)).status_code == 202


def test_openapi_states_the_bounds(client):
    doc = client.get("/v1/openapi.json").json
    params = {p["name"]: p["schema"] for p in doc["paths"]["/v1/audits"]["get"]["parameters"]}
    assert params["page"]["minimum"] == 1 and params["page"]["maximum"] == 1_000_000
    assert params["page_size"]["maximum"] * params["page"]["maximum"] < INT64_MAX
    assert params["label"]["maxLength"] == 200
    request = doc["components"]["schemas"]["AuditRequest"]["properties"]
    assert request["seed"]["minimum"] == 0 and request["seed"]["maximum"] == INT64_MAX
    assert request["label"]["maxLength"] == 200
    integers = [prop for name, schema in doc["components"]["schemas"].items() if name.endswith("Params")
                for prop in schema.get("properties", {}).values() if prop.get("type") == "integer"]
    assert integers and all(p["maximum"] <= INT64_MAX and p["minimum"] >= -(2**63) for p in integers)
    assert "details" in doc["components"]["schemas"]["Error"]["required"]


# --- .part files ------------------------------------------------------------------------------------


class _Broken(io.RawIOBase):
    """A body that stops after ``n`` bytes the way werkzeug reports a vanished client."""

    def __init__(self, n: int, error: BaseException) -> None:
        self.left, self.error = n, error

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            raise self.error
        chunk = min(self.left, size if size > 0 else self.left, 4096)
        self.left -= chunk
        return b"x" * chunk


def test_interrupted_and_oversized_uploads_leave_no_part_file(tmp_path):
    storage = Storage(tmp_path)
    with pytest.raises(ClientDisconnected):
        storage.save_upload(_Broken(3 << 20, ClientDisconnected()), "m.pt", max_bytes=10 << 20)
    with pytest.raises(UploadTooLarge):
        storage.save_upload(io.BytesIO(b"x" * (3 << 20)), "m.pt", max_bytes=1 << 20)
    with pytest.raises(KeyboardInterrupt):
        storage.save_upload(_Broken(5, KeyboardInterrupt()), "m.pt", max_bytes=1 << 20)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "models").exists()


def test_remove_partials(tmp_path):
    storage = Storage(tmp_path)
    (tmp_path / "tmp").mkdir()
    old, young, other = (tmp_path / "tmp" / n for n in ("a.part", "b.part", "keep.txt"))
    for p in (old, young, other):
        p.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert storage.remove_partials(older_than_s=600) == 1
    assert not old.exists() and young.exists()
    assert storage.remove_partials() == 1
    assert not young.exists() and other.exists()
    assert Storage(tmp_path / "none").remove_partials() == 0


def test_serve_removes_partials_before_starting_its_children(tmp_path, monkeypatch):
    import argparse

    from service import processes

    stale = tmp_path / "storage" / "tmp" / "x.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    seen: list[bool] = []

    class _Exited:  # a child that has already exited, so serve stops at once
        def __init__(self, cmd, env):  # type: ignore[no-untyped-def]
            seen.append(stale.exists())

        def poll(self) -> int:
            return 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setenv("ROBUSTAUDIT_HOME", str(tmp_path))
    for var in ("ROBUSTAUDIT_STORAGE_DIR", "ROBUSTAUDIT_DATABASE_URL", "ROBUSTAUDIT_DATA_ROOTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(processes.subprocess, "Popen", _Exited)
    monkeypatch.setattr(processes.signal, "signal", lambda *_: None)
    code = processes.cmd_serve(argparse.Namespace(bind="127.0.0.1:1", api_workers=1, dev=False))
    assert code == 1 and seen == [False, False, False]  # gone before the first child started


# --- a real gunicorn (robustaudit api) and raw sockets ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the answer to the end (we always ask for Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


def _get(port: int, target: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
    return _exchange(port, f"GET {target} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n".encode("latin-1"))


def _json_error(answer: tuple[int, dict[str, str], bytes], status: int) -> dict:
    code, headers, body = answer
    assert code == status, (code, body[:300])
    assert headers["content-type"].startswith("application/json"), headers
    data = json.loads(body)
    assert data["status"] == status and data["message"] and isinstance(data["details"], dict)
    assert set(data) == {"status", "code", "message", "details"}
    return data


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``robustaudit api`` with 2 workers on a free port, an SQLite store, open mode, and a stale
    ``.part`` file in storage/tmp before it starts."""
    home = tmp_path_factory.mktemp("served")
    stale = home / "storage" / "tmp" / "stale-upload.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ROBUSTAUDIT_HOME": str(home), "ROBUSTAUDIT_BROKER_URL": "memory://",
           "ROBUSTAUDIT_MAX_UPLOAD_MB": "4"}
    for var in ("ROBUSTAUDIT_API_TOKENS", "ROBUSTAUDIT_API_TOKEN_HASHES", "ROBUSTAUDIT_DATABASE_URL",
                "ROBUSTAUDIT_STORAGE_DIR"):
        env.pop(var, None)
    log = open(home / "gunicorn.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "api", "--bind", f"127.0.0.1:{port}",
                             "--workers", "2"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            if _get(port, "/healthz")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError((home / "gunicorn.log").read_text()[-3000:])
        time.sleep(0.3)
    yield {"port": port, "home": home, "stale": stale, "log": home / "gunicorn.log"}
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def test_served_partials_removed_at_start(server):
    assert not server["stale"].exists()


def test_gunicorn_errors_are_json(server):
    port = server["port"]
    _json_error(_get(port, "/v1/audits/" + "a" * 9000), 414)  # request line past gunicorn's limit
    _json_error(_exchange(port, b"NOT A REQUEST LINE\r\n\r\n"), 400)
    _json_error(_exchange(port, b"GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n"), 400)
    huge = _json_error(_get(port, "/healthz", "X-Big: " + "h" * 9000 + "\r\n"), 431)
    assert huge["code"] == "header_fields_too_large"
    many = "".join(f"X-H{i}: v\r\n" for i in range(150))
    assert _json_error(_get(port, "/healthz", many), 431)["code"] == "header_fields_too_large"
    _json_error(_get(port, "/healthz", "Bad\x00Header: v\r\n"), 400)


def test_served_bounds_and_redirects(server):
    port = server["port"]
    assert _json_error(_get(port, "/v1/audits/" + "a" * 300), 414)["code"] == "uri_too_long"
    assert _json_error(_get(port, "/v1/" + "b/" * 2500), 414)["code"] == "uri_too_long"
    assert _json_error(_get(port, "/v1/audits/%00"), 400)["code"] == "invalid_string"
    assert _json_error(_get(port, "/v1/audits/x/artifacts/%00"), 400)["code"] == "invalid_string"
    for path in ("//v1/models", "/v1//models"):  # gunicorn may fold the leading '//'; nobody redirects
        status, headers, _ = _get(port, path)
        assert status in (200, 404) and "location" not in headers and headers["content-type"] == "application/json"
    status, headers, body = _get(port, "/v1/models/")
    assert status == 200 and json.loads(body)["total"] == 0


def test_served_chunked_json_over_the_limit_is_413(server):
    chunk = b'{"model": "' + b"x" * (MAX_JSON_BYTES + 100) + b'"}'
    data = (b"POST /v1/audits HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
    try:
        answer = _exchange(server["port"], data)
    except ConnectionResetError:  # the server answered before reading it all; read what it sent
        pytest.fail("the connection was reset before the 413 arrived")
    assert _json_error(answer, 413)["code"] == "payload_too_large"


def _slow_upload(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /v1/models HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=B\r\n"
              b"Content-Length: 100000\r\n\r\n--B\r\nContent-Disposition: form-data; name=\"checkpoint\"; "
              b"filename=\"m.pt\"\r\n\r\n")
    return s


def test_slow_clients_do_not_starve_healthz(server):
    port = server["port"]
    slow = [_slow_upload(port), _slow_upload(port)]
    try:
        times = []
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            for s in slow:
                s.sendall(b"x")  # 1 byte per second each
            t0 = time.monotonic()
            status, _, _ = _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                                     timeout=1.0)
            times.append(time.monotonic() - t0)
            assert status == 200
            time.sleep(max(0.0, 1.0 - times[-1]))
        assert len(times) >= 4 and max(times) < 1.0, times
    finally:
        for s in slow:
            s.close()


def test_client_disconnecting_mid_upload_leaves_no_part_file(server):
    port = server["port"]
    s = _slow_upload(port)
    s.sendall(b"x" * 50_000)  # half the declared body, then the client vanishes
    s.close()
    time.sleep(1.0)
    assert not list((server["home"] / "storage").rglob("*.part"))
    assert not list((server["home"] / "storage" / "models").glob("*"))
    assert _get(port, "/healthz")[0] == 200


def test_served_upload_over_the_limit_is_413_json(server):
    body = b"--B\r\nContent-Disposition: form-data; name=\"checkpoint\"; filename=\"m.pt\"\r\n\r\n" + b"x" * (5 << 20)
    head = (b"POST /v1/models HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
    raw = b""
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as s:
        s.sendall(head)  # the 413 comes from the Content-Length alone: the body is never sent
        try:
            while chunk := s.recv(65536):
                raw += chunk
        except ConnectionResetError:  # the server may reset a connection whose body it did not read
            pass
    status = int(raw.split(b" ")[1])
    assert status == 413 and b'"code":"payload_too_large"' in raw.replace(b" ", b"")
    assert not list((server["home"] / "storage" / "models").glob("*"))


# --- the same probes on PostgreSQL, which refuses NUL where SQLite stores it -------------------------


@pytest.fixture()
def pg_client(tmp_path):
    psycopg = pytest.importorskip("psycopg")
    admin = os.environ.get("ROBUSTAUDIT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"ra_hostile_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    from service.app import create_app
    from service.config import Config, hash_token
    from service.store import Store
    from tests.service.conftest import TOKENS, RecordingDispatcher

    url = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    store = Store(url)
    store.migrate()
    config = Config(home=tmp_path, database_url=url, broker_url="memory://", storage_dir=tmp_path / "storage",
                    data_roots=(tmp_path / "storage" / "data",), max_upload_mb=2.0, device="cpu",
                    token_hashes={hash_token(t): tenant for tenant, t in TOKENS.items()})
    dispatcher = RecordingDispatcher()
    yield create_app(config, dispatcher=dispatcher, store=store).test_client(), dispatcher
    store.dispose()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_nul_probes_on_postgresql_are_4xx(pg_client):
    client, dispatcher = pg_client
    probes = [client.get(path, headers=auth()) for path in (
        "/v1/audits/a%00b", "/v1/audits/a%00b/report", "/v1/audits/x/artifacts/%00", "/v1/models/%00",
        "/v1/schedules/%00", "/v1/audits?label=a%00", "/v1/audits?model=%00", "/v1/audits?status=%00")]
    for text in ('{"model": "a\\u0000", "dataset": "builtin:digits"}',
                 '{"model": "m", "dataset": "builtin:digits", "label": "\\u0000"}',
                 '{"model": "m", "dataset": "builtin:digits", "label": "\\ud800"}'):
        probes += [_post_raw(client, text), _post_raw(client, text[:-1] + ', "cron": "* * * * *"}', "/v1/schedules")]
    probes.append(post_audit(client, {"model": "m", "dataset": "builtin:digits"}, headers={"Idempotency-Key": "\x00"}))
    for resp in probes:
        assert 400 <= resp.status_code < 500 and set(resp.get_json()) == {"status", "code", "message", "details"}, (
            resp.request.path, resp.status_code, resp.get_data(as_text=True)[:200])
    assert dispatcher.sent == []
    assert client.get("/v1/audits", headers=auth()).json["total"] == 0
