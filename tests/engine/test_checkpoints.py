"""A retried audit reloads finished shards: same metrics, no shard run twice.

Run for every registered suite, which also checks that every suite's partial is plain
JSON data (the checkpoint round-trips it).
"""

import pytest

from tests.conftest import DEMO
from worker.engine.checkpoints import DirectoryCheckpoints, shard_key
from worker.engine.metrics import iter_leaves
from worker.engine.runner import resolve_inputs, run_audit
from worker.engine.spec import AuditSpec
from worker.engine.suites import SUITES

TIMINGS = {"seconds", "per_second"}


def stable_metrics(report):
    """Metric values without timings, which differ from run to run."""
    return {(name, path): leaf["value"] for name, suite in report["suites"].items()
            for path, leaf in iter_leaves(suite["metrics"]) if leaf["unit"] not in TIMINGS}


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_resume_gives_the_same_report(tmp_path, monkeypatch, data_root, suite):
    spec = AuditSpec.from_dict({
        "model": str(DEMO / "digits_cnn.pt"),
        "dataset": {"kind": "builtin", "name": "digits", "n_samples": 9, "seed": 1},
        "suites": {suite: SUITES[suite].demo_params}, "device": "cpu"})
    inputs = resolve_inputs(spec)
    store = DirectoryCheckpoints(tmp_path / "checkpoints")
    first = run_audit(spec, tmp_path / "a", shards=3, checkpoints=store, inputs=inputs)
    saved = sorted(p.name for p in store.root.iterdir())
    assert len(saved) == 3 * len(spec.suites)

    calls = []
    original = SUITES[suite].run
    monkeypatch.setattr(SUITES[suite], "run", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    resumed = run_audit(spec, tmp_path / "a", shards=3, checkpoints=store, inputs=inputs)
    assert calls == []
    assert resumed["suites"][suite]["resumed_shards"] == 3
    assert stable_metrics(resumed) == stable_metrics(first)

    # A kill in the middle: the last shard of the suite was never saved.
    (store.root / f"{sorted(n for n in saved if n.startswith(suite + '-'))[-1]}").unlink()
    partly = run_audit(spec, tmp_path / "a", shards=3, checkpoints=store, inputs=inputs)
    assert len(calls) == 1
    assert partly["suites"][suite]["resumed_shards"] == 2
    assert stable_metrics(partly) == stable_metrics(first)


def test_key_changes_with_what_the_shard_depends_on():
    base = dict(params={"a": 1}, seed=0, sample_ids=["x", "y"])
    key = shard_key("clean", 0, 2, **base)
    assert key.startswith("clean-00000-of-00002-")
    assert shard_key("clean", 0, 2, **{**base, "params": {"a": 2}}) != key
    assert shard_key("clean", 0, 2, **{**base, "seed": 1}) != key
    assert shard_key("clean", 0, 2, **{**base, "sample_ids": ["x", "z"]}) != key
    assert shard_key("clean", 0, 2, **base, engine="robustaudit 9.9, torch 2.4") != key


def test_damaged_checkpoint_is_redone(tmp_path):
    store = DirectoryCheckpoints(tmp_path)
    store.save("k", {"n": 1})
    assert store.load("k") == {"n": 1}
    (tmp_path / "k.json").write_text("{not json")
    assert store.load("k") is None
    assert store.load("missing") is None
