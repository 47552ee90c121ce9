"""Hostile uploads against the API, as a client would send them: each is refused with a 4xx and
the JSON error body, its side effect never happens, and no process of the service (the API
process, or the sandboxed checker it starts) passes 2 GiB of resident memory.

The uploads run in a fresh process that builds the app, so its peak RSS is the API's alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.engine.hostile_models import (
    DeflatedZeros,
    bomb_zip,
    pt2_with_opaque_constant,
    pt2_with_pickled_weight,
    root_of,
)
from tests.engine.model_factories import TinyCNN, card_dict, save_torchscript
from tests.service.conftest import DEMO
from tests.service.test_sandbox import _AtLoad, _InForward

ROOT = Path(__file__).resolve().parents[2]
GIB_KB = 2 * 1024 * 1024

UPLOADER = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from service.app import create_app
    from service.config import Config, hash_token
    from service.store import Store

    cases, home = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    config = Config(home=home, database_url=f"sqlite:///{home / 'store.sqlite'}", broker_url="memory://",
                    storage_dir=home / "storage", data_roots=(home / "storage" / "data",),
                    token_hashes={hash_token("tok"): "alice"}, max_upload_mb=64.0, device="cpu")
    store = Store(config.database_url)
    store.migrate()

    class NoDispatch:
        def send(self, audit_id):
            raise AssertionError("nothing may be queued")

    def peak_kb():
        # VmHWM: ru_maxrss of an exec'd process starts at its parent's peak (pytest's), VmHWM does not
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

    client = create_app(config, dispatcher=NoDispatch(), store=store).test_client()
    before = peak_kb()
    out = {}
    for name, case in cases.items():
        card = case["card"] if isinstance(case["card"], str) else json.dumps(case["card"])
        with open(case["file"], "rb") as f:
            resp = client.post("/v1/models", headers={"Authorization": "Bearer tok"},
                               content_type="multipart/form-data",
                               data={"checkpoint": (f, Path(case["file"]).name), "card": card})
        out[name] = {"status": resp.status_code, "body": resp.get_json()}
    out["_rss"] = {"self_before_kb": before, "self_kb": peak_kb(),
                   "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}
    out["_models"] = client.get("/v1/models", headers={"Authorization": "Bearer tok"}).get_json()["items"]
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    markers = {k: root / f"marker-{k}" for k in ("pickle", "opaque", "setstate")}
    victim = root / "victim.bin"
    victim.write_bytes(b"original-content")
    demo_pt2 = DEMO / "digits_cnn_export.pt2"
    pt2_card = json.loads((DEMO / "digits_cnn_export.card.json").read_text())
    ts_card = json.loads((DEMO / "digits_cnn.card.json").read_text())
    zeros = DeflatedZeros()
    tiny = TinyCNN()
    state = root / "state.pt"
    torch.save(tiny.state_dict(), state)
    script = save_torchscript(tiny, root / "script.pt")
    in_forward, at_load = root / "in_forward.pt", root / "at_load.pt"
    torch.jit.save(torch.jit.script(_InForward(str(victim))), str(in_forward))
    torch.jit.save(torch.jit.script(_AtLoad(str(markers["setstate"]))), str(at_load))
    deep = "[" * 100_000 + "]" * 100_000
    cases = {
        "pt2_pickled_weight": (pt2_with_pickled_weight(demo_pt2, root / "w.pt2", markers["pickle"]), pt2_card),
        "pt2_opaque_constant": (pt2_with_opaque_constant(demo_pt2, root / "c.pt2", markers["opaque"]), pt2_card),
        "torchscript_from_file": (in_forward, {**ts_card, "num_classes": 10}),
        "torchscript_setstate": (at_load, ts_card),
        "bomb_state_dict": (bomb_zip(state, root / "bomb.pt", f"{root_of(state)}/data/0", zeros),
                            {"format": "state_dict", "arch": "resnet18", "num_classes": 10,
                             "input_size": [3, 32, 32]}),
        "bomb_torchscript": (bomb_zip(script, root / "bomb-ts.pt", f"{root_of(script)}/data/0", zeros),
                             card_dict("torchscript")),
        "bomb_export": (bomb_zip(demo_pt2, root / "bomb.pt2", f"{root_of(demo_pt2)}/data/weights/weight_0", zeros),
                        pt2_card),
        "num_classes_1e12": (DEMO / "digits_cnn.pt", {**ts_card, "num_classes": 10**12, "class_names": None}),
        "input_size_huge": (DEMO / "digits_cnn.pt", {**ts_card, "input_size": [1, 100_000, 100_000]}),
        "card_100k_deep": (DEMO / "digits_cnn.pt", deep),
        "demo_ok": (DEMO / "digits_cnn.pt", ts_card),
    }
    for _, card in cases.values():
        if isinstance(card, dict) and card.get("class_names", 0) is None:
            del card["class_names"]
    return root, victim, markers, {k: {"file": str(f), "card": c} for k, (f, c) in cases.items()}


@pytest.mark.slow
def test_hostile_uploads_are_refused_without_side_effects_or_memory(hostile, tmp_path):
    root, victim, markers, cases = hostile
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    done = subprocess.run([sys.executable, "-c", UPLOADER, str(spec), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    expected_words = {"pt2_pickled_weight": "use_pickle", "pt2_opaque_constant": "opaque_obj",
                      "torchscript_from_file": "from_file", "torchscript_setstate": "__setstate__",
                      "bomb_state_dict": "zip bomb", "bomb_torchscript": "zip bomb", "bomb_export": "zip bomb",
                      "num_classes_1e12": "num_classes", "input_size_huge": "input_size",
                      "card_100k_deep": "deep"}
    for name, word in expected_words.items():
        resp = got[name]
        assert 400 <= resp["status"] < 500, (name, resp)
        body = resp["body"]
        assert set(body) == {"status", "code", "message", "details"}, (name, body)
        assert word in body["message"], (name, body["message"])
        assert str(tmp_path) not in json.dumps(body) and str(root) not in body["message"], (name, body)
    assert got["demo_ok"]["status"] == 201, got["demo_ok"]
    assert [m["name"] for m in got["_models"]] == ["digits_cnn"]  # nothing hostile was registered
    assert not any(m.exists() for m in markers.values())
    assert victim.read_bytes() == b"original-content"
    stored = sorted(p.name for p in (tmp_path / "storage" / "models").iterdir())
    assert len(stored) == 1  # refused files are not kept
    rss = got["_rss"]
    assert rss["self_kb"] < GIB_KB, rss
    assert rss["children_kb"] < GIB_KB, rss
    print(f"peak RSS: API process {rss['self_kb'] / 1024:.0f} MB, sandboxed checks "
          f"{rss['children_kb'] / 1024:.0f} MB")
