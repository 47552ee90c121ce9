"""Shards that any worker can take: claims granted, refused or split between processes; the merge
happens once, after every partial is saved, and gives what a one-process run gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DEMO
from tests.tiny import random_samples, tiny_classifier
from worker.engine.checkpoints import DirectoryCheckpoints
from worker.engine.metrics import iter_leaves
from worker.engine.runner import ShardClaim, resolve_inputs, run_audit, run_suite
from worker.engine.spec import AuditSpec
from worker.engine.suites import get_suite
from worker.engine.suites.base import ArtifactStore, SuiteContext

ROOT = Path(__file__).resolve().parents[2]
SUITES = {"clean": {}, "fragile": {"region_fractions": [0.7], "example_pairs": 1}}
TIMINGS = {"seconds", "per_second"}
#: shards -> (report, output folder) of the unclaimed one-process run
Reference = Callable[[int], tuple[dict, Path]]


def spec_of(suites: dict | None = None) -> AuditSpec:
    return AuditSpec.from_dict({
        "model": str(DEMO / "digits_cnn.pt"),
        "dataset": {"kind": "builtin", "name": "digits", "n_samples": 6, "seed": 3},
        "suites": suites or SUITES, "gates": ["clean.top1 >= 0.5"], "device": "cpu"})


def stable(report: dict) -> dict:
    """Metric values without timings, and the verdict."""
    values = {(name, path): leaf["value"] for name, suite in report["suites"].items()
              for path, leaf in iter_leaves(suite["metrics"]) if leaf["unit"] not in TIMINGS}
    return {"metrics": values, "verdict": report["verdict"],
            "artifacts": {n: sorted(s["artifacts"]) for n, s in report["suites"].items()}}


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The unclaimed one-process run with the same shards, which claimed runs must equal exactly.
    (Other shard counts batch the samples otherwise, and a convolution's float sums differ in the
    last bits with the batch.)"""
    runs: dict[int, tuple[dict, Path]] = {}

    def get(shards: int) -> tuple[dict, Path]:
        if shards not in runs:
            out = tmp_path_factory.mktemp(f"whole{shards}")
            runs[shards] = run_audit(spec_of(), out, shards=shards), out
        return runs[shards]
    return get


def test_all_granted_equals_the_unclaimed_run(tmp_path: Path, whole: Reference) -> None:
    asked: list[ShardClaim] = []
    finals: list[list[str]] = []
    store = DirectoryCheckpoints(tmp_path / "ck")
    report = run_audit(spec_of(), tmp_path / "out", shards=3, checkpoints=store,
                       claim=lambda c: asked.append(c) or True, finalize=lambda keys: finals.append(keys) or True)
    assert [(c.suite, c.shard, c.of) for c in asked] == [(s, i, 3) for s in SUITES for i in range(3)]
    assert finals == [[c.key for c in asked]]  # the merge is asked for once, with every key
    assert sorted(p.stem for p in store.root.glob("*.json")) == sorted(c.key for c in asked)
    assert stable(report) == stable(whole(3)[0])


def test_refused_shards_leave_the_audit_incomplete_until_another_runs_them(tmp_path: Path, whole: Reference) -> None:
    store = DirectoryCheckpoints(tmp_path / "ck")
    spec = spec_of()
    inputs = resolve_inputs(spec)
    finals: list[list[str]] = []
    first = run_audit(spec, tmp_path / "out", shards=3, checkpoints=store, inputs=inputs,
                      claim=lambda c: c.shard != 1, finalize=lambda keys: finals.append(keys) or True)
    assert first["incomplete"] is True and finals == []
    assert [k.split("-")[:2] for k in first["ran"]] == [["clean", "00000"], ["clean", "00002"],
                                                         ["fragile", "00000"], ["fragile", "00002"]]
    assert [k.split("-")[:2] for k in first["missing"]] == [["clean", "00001"], ["fragile", "00001"]]
    assert not (tmp_path / "out" / "report.json").exists()

    # a second worker: the saved shards are not claimed again, the missing ones are, then the merge
    asked: list[str] = []
    second = run_audit(spec, tmp_path / "out", shards=3, checkpoints=store, inputs=inputs,
                       claim=lambda c: asked.append(c.key) or True, finalize=lambda keys: finals.append(keys) or True)
    assert asked == first["missing"]
    assert len(finals) == 1 and set(finals[0]) == set(first["ran"]) | set(first["missing"])
    assert stable(second) == stable(whole(3)[0])
    assert second["suites"]["clean"]["resumed_shards"] == 2
    assert json.loads((tmp_path / "out" / "report.json").read_text())["verdict"] == second["verdict"]


def test_a_refused_merge_is_incomplete_with_nothing_missing(tmp_path: Path) -> None:
    store = DirectoryCheckpoints(tmp_path / "ck")
    got = run_audit(spec_of({"clean": {}}), tmp_path / "out", shards=2, checkpoints=store,
                    claim=lambda c: True, finalize=lambda keys: False)
    assert got == {"incomplete": True, "ran": got["ran"], "missing": []} and len(got["ran"]) == 2
    assert not (tmp_path / "out" / "report.json").exists()


def test_nothing_granted_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite = get_suite("clean")
    monkeypatch.setattr(type(suite), "run", lambda *a, **k: pytest.fail("a refused shard ran"))
    got = run_audit(spec_of({"clean": {}}), tmp_path / "out", shards=2, checkpoints=DirectoryCheckpoints(tmp_path),
                    claim=lambda c: False, finalize=lambda keys: pytest.fail("merge asked with shards missing"))
    assert got["ran"] == [] and len(got["missing"]) == 2


def test_claims_need_a_checkpoint_store(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint store"):
        run_audit(spec_of({"clean": {}}), tmp_path, claim=lambda c: True)


def test_check_inputs_runs_once_per_suite_and_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    suite = get_suite("clean")
    original = type(suite).check_inputs
    monkeypatch.setattr(type(suite), "check_inputs",
                        lambda self, *a: calls.append(self.name) or original(self, *a))
    run_audit(spec_of({"clean": {}}), tmp_path / "out", shards=3)
    assert calls == ["clean"]


def test_a_suite_that_raises_leaves_the_context_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, float]] = []
    outer = lambda s, f: seen.append((s, f))  # noqa: E731
    ctx = SuiteContext(classifier=tiny_classifier(), artifacts=ArtifactStore(tmp_path), on_progress=outer)
    suite = get_suite("clean")
    original = type(suite).run

    def failing(self, c, samples, params):  # the second shard fails after reporting progress
        if c.on_progress is not outer and seen:
            raise RuntimeError("boom")
        return original(self, c, samples, params)

    monkeypatch.setattr(type(suite), "run", failing)
    with pytest.raises(RuntimeError, match="boom"):
        run_suite("clean", suite.validate_params({}), ctx, random_samples(6), shards=2)
    assert ctx.suite == "" and ctx.on_progress is outer and ctx.shared == {}
    assert seen and all(s == "clean" and f <= 0.5 for s, f in seen)


# -- two processes, one audit folder ------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, os, sys
    from worker.engine.checkpoints import DirectoryCheckpoints
    from worker.engine.runner import run_audit
    from worker.engine.spec import AuditSpec

    spec, out, ck, parity = AuditSpec.from_dict(json.loads(sys.argv[1])), sys.argv[2], sys.argv[3], int(sys.argv[4])

    def finalize(keys):  # granted once: the first to create the marker
        try:
            os.close(os.open(os.path.join(ck, "finalize.lock"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    got = run_audit(spec, out, shards=4, checkpoints=DirectoryCheckpoints(ck),
                    claim=lambda c: c.shard % 2 == parity, finalize=finalize)
    print(json.dumps({"incomplete": got.get("incomplete", False), "ran": got.get("ran")}))
""")


def _files(root: Path) -> dict[str, object]:
    """Every file under ``root``: NPZ archives by their arrays (zip entries carry times), others by bytes."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(root))
            if p.suffix == ".npz":
                with np.load(p) as z:
                    out[rel] = {k: z[k].tobytes() + str(z[k].dtype).encode() for k in sorted(z.files)}
            else:
                out[rel] = p.read_bytes()
    return out


def test_two_processes_share_one_audit_folder(tmp_path: Path, whole: Reference) -> None:
    """Each of two concurrent processes runs half the shards into the same folder; one merges.
    The artifacts and the metrics are those of a one-process run."""
    out, ck = tmp_path / "out", tmp_path / "ck"
    ck.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(spec_of().to_dict()), str(out), str(ck),
                               str(parity)], stdout=subprocess.PIPE, env=env, cwd=ROOT) for parity in (0, 1)]
    results = [json.loads(p.communicate(timeout=600)[0].decode().strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(len(r["ran"] or []) == 2 * len(SUITES) for r in results if r["incomplete"])
    assert sorted(r["incomplete"] for r in results) == [False, True]  # exactly one merged
    report = json.loads((out / "report.json").read_text())
    assert stable(report) == stable(whole(4)[0])
    mine, theirs = _files(out / "artifacts"), _files(whole(4)[1] / "artifacts")
    assert sorted(mine) == sorted(theirs) and mine == theirs
    assert any(name.endswith(".npz") for name in mine)
