"""The claim protocol through the real sandbox: an audit shared between workers asks for each
shard and for the merge; a hostile child cannot flood the caller or block it."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO
from worker import sandbox as sandbox_mod
from worker.engine.metrics import iter_leaves
from worker.sandbox import Sandbox, SandboxFailed, SandboxJob, SandboxLimits, SandboxMode

SPEC = {"model": "model.pt", "card": "model.card.json", "device": "cpu", "gates": ["clean.top1 >= 0.5"],
        "dataset": {"kind": "builtin", "name": "digits", "n_samples": 6, "seed": 2}, "suites": {"clean": {}}}


def audit_job(tmp_path: Path, *, claims: bool = True) -> SandboxJob:
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "ck").mkdir(exist_ok=True)
    return SandboxJob("audit", {"spec": SPEC, "data_roots": [str(tmp_path)], "shard_size": 2, "claims": claims},
                      inputs={"model.pt": DEMO / "digits_cnn.pt", "model.card.json": DEMO / "digits_cnn.card.json"},
                      output_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ck")


def values(report: dict[str, Any]) -> dict[str, Any]:
    return {p: leaf["value"] for p, leaf in iter_leaves(report["suites"]["clean"]["metrics"])}


def test_claims_refused_then_granted_through_bwrap(tmp_path: Path) -> None:
    sandbox = Sandbox(SandboxMode.BWRAP, SandboxLimits(wall_s=300))
    asked: list[dict[str, Any]] = []

    def first_worker(claim: dict[str, Any]) -> bool:
        asked.append(claim)
        return claim.get("shard") != 1  # shard 1 is someone else's

    got = sandbox.run(audit_job(tmp_path), on_claim=first_worker)
    assert got.error is None and got.result is not None
    keys = [c["key"] for c in asked]
    assert [(c["suite"], c["shard"], c["of"]) for c in asked] == [("clean", i, 3) for i in range(3)]
    assert got.result == {"incomplete": True, "ran": [keys[0], keys[2]], "missing": [keys[1]]}
    assert sorted(p.stem for p in (tmp_path / "ck").glob("*.json")) == sorted([keys[0], keys[2]])

    later: list[dict[str, Any]] = []
    done = sandbox.run(audit_job(tmp_path), on_claim=lambda c: later.append(c) or True)
    assert done.error is None and done.result is not None and "incomplete" not in done.result
    assert later == [asked[1], {"finalize": True, "keys": keys}]  # the missing shard, then the merge once
    assert done.result["suites"]["clean"]["resumed_shards"] == 2

    # the same audit unclaimed, in one go with the same shards: the same numbers
    (tmp_path / "whole").mkdir()
    whole = sandbox.run(audit_job(tmp_path / "whole", claims=False))
    assert whole.result is not None and values(whole.result) == values(done.result)
    assert whole.result["verdict"] == done.result["verdict"]


def test_without_on_claim_every_claim_is_refused(tmp_path: Path) -> None:
    got = Sandbox(SandboxMode.BWRAP, SandboxLimits(wall_s=300)).run(audit_job(tmp_path))
    assert got.result is not None and got.result["incomplete"] is True
    assert got.result["ran"] == [] and len(got.result["missing"]) == 3
    assert not list((tmp_path / "ck").glob("*.json")) and not (tmp_path / "out" / "report.json").exists()


def test_a_refused_merge_leaves_no_report(tmp_path: Path) -> None:
    got = Sandbox(SandboxMode.BWRAP, SandboxLimits(wall_s=300)).run(
        audit_job(tmp_path), on_claim=lambda c: "finalize" not in c)
    assert got.result is not None and got.result["incomplete"] is True and got.result["missing"] == []
    assert len(got.result["ran"]) == 3 and not (tmp_path / "out" / "report.json").exists()


# -- scripted (hostile) children ----------------------------------------------------------------

def scripted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str) -> SandboxJob:
    script = tmp_path / "child.py"
    script.write_text("import json, os, sys\nfd = int(sys.argv[1])\njob = sys.stdin.readline()\n"
                      "def send(m):\n    os.write(fd, (json.dumps(m) + '\\n').encode())\n" + textwrap.dedent(body))
    monkeypatch.setattr(sandbox_mod, "child_argv", lambda fd: [sys.executable, "/tmp/in/child.py", str(fd)])
    return SandboxJob("audit", {}, inputs={"child.py": script})


def claim(i: int) -> dict[str, Any]:
    return {"suite": "clean", "shard": i, "of": 10**6, "key": f"clean-{i}"}


def test_a_child_gets_one_answer_per_claim(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    job = scripted(monkeypatch, tmp_path, """
        answers = []
        for i in range(3):
            send({"claim": {"suite": "clean", "shard": i, "of": 3, "key": f"k{i}"}})
            answers.append(json.loads(sys.stdin.readline()))
        send({"claim": {"finalize": True, "keys": ["k0", "k1", "k2"]}})
        answers.append(json.loads(sys.stdin.readline()))
        send({"result": {"answers": answers}})
    """)
    asked: list[dict[str, Any]] = []
    got = Sandbox(SandboxMode.BWRAP, SandboxLimits(wall_s=60)).run(
        job, on_claim=lambda c: asked.append(c) or c.get("shard") != 1)
    assert got.result == {"answers": [{"granted": True}, {"granted": False}, {"granted": True}, {"granted": True}]}
    assert asked[-1] == {"finalize": True, "keys": ["k0", "k1", "k2"]}


def test_a_flood_of_claims_is_cut_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sandbox_mod, "MAX_CLAIMS", 50)
    job = scripted(monkeypatch, tmp_path, f"""
        for i in range(100000):  # a fresh shard each time, each answer read: only the count stops it
            send({{"claim": dict({claim(0)!r}, shard=i, key=f"k{{i}}")}})
            sys.stdin.readline()
    """)
    asked: list[dict[str, Any]] = []
    with pytest.raises(SandboxFailed, match="more than 50 claims"):
        Sandbox(SandboxMode.BWRAP, SandboxLimits(wall_s=60)).run(job, on_claim=lambda c: asked.append(c) or True)
    assert len(asked) == 50


def test_a_child_that_never_reads_its_answers_cannot_block_the_parent(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    job = scripted(monkeypatch, tmp_path, f"""
        import time
        for i in range(4000):
            send({{"claim": dict({claim(0)!r}, shard=i, key=f"k{{i}}")}})
        time.sleep(600)
    """)
    asked: list[dict[str, Any]] = []
    with pytest.raises(SandboxFailed, match="without reading their answers"):
        Sandbox(SandboxMode.BWRAP, SandboxLimits(wall_s=120)).run(job, on_claim=lambda c: asked.append(c) or True)
    assert 1000 < len(asked) < 4000  # a pipe's worth of answers, then refused (not the wall limit)


@pytest.mark.parametrize(("claims", "message"), [
    ([claim(1), claim(1)], "same shard twice"),
    ([{"finalize": True, "keys": ["a"]}, {"finalize": True, "keys": ["a"]}], "repeated finalize"),
    ([{"suite": "clean", "shard": 3, "of": 2, "key": "k"}], "malformed claim"),
    ([{"suite": "clean", "shard": "0", "of": 2, "key": "k"}], "malformed claim"),
    ([{"suite": "clean", "shard": 0, "of": 2, "key": "k" * 300}], "malformed claim"),
    ([{"suite": "clean", "shard": 0, "of": 2, "key": "k", "extra": 1}], "malformed claim"),
    ([{"finalize": True, "keys": "all"}], "malformed or repeated finalize"),
    (["clean-0"], "malformed claim"),
])
def test_bad_claims_fail_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, claims: list[Any],
                                 message: str) -> None:
    job = scripted(monkeypatch, tmp_path, f"""
        for c in {claims!r}:
            send({{"claim": c}})
            sys.stdin.readline()
        send({{"result": {{}}}})
    """)
    with pytest.raises(SandboxFailed, match=message):
        Sandbox(SandboxMode.BWRAP, SandboxLimits(wall_s=60)).run(job, on_claim=lambda c: True)
