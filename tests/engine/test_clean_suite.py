"""The clean suite against a direct computation, and exact merging of shards."""

import pytest
import torch

from tests.tiny import random_samples, tiny_classifier
from worker.engine.runner import run_suite
from worker.engine.suites import get_suite
from worker.engine.suites.base import ArtifactStore, SuiteContext


def context(tmp_path, clf=None):
    return SuiteContext(classifier=clf or tiny_classifier(), artifacts=ArtifactStore(tmp_path / "artifacts"))


def reference_metrics(clf, samples, bins=15):
    x = samples.prepared(clf.card)
    with torch.no_grad():
        probs = torch.softmax(clf(x).double(), dim=1)
    y = samples.labels
    conf, pred = probs.max(1)
    correct = pred.eq(y)
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.sum().item() / len(y) * abs(conf[m].mean().item() - correct[m].double().mean().item())
    return {
        "top1": correct.double().mean().item(),
        "top5": probs.topk(5, 1).indices.eq(y[:, None]).any(1).double().mean().item(),
        "mean_confidence": conf.mean().item(),
        "nll": -torch.log(probs.gather(1, y[:, None])).mean().item(),
        "ece": ece,
    }


def test_metrics_match_direct_computation(tmp_path):
    clf, samples = tiny_classifier(), random_samples(40)
    entry = run_suite("clean", get_suite("clean").validate_params({}), context(tmp_path, clf), samples)
    ref = reference_metrics(clf, samples)
    for key, value in ref.items():
        assert entry["metrics"][key]["value"] == pytest.approx(value, abs=1e-9), key
        assert entry["metrics"][key]["n"] == 40
    per = entry["metrics"]["per_class"]
    assert set(per) == {str(i) for i in range(10)}
    assert sum(v["n"] for v in per.values()) == 40


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_shards_merge_exactly(tmp_path, shards):
    samples = random_samples(23)
    suite = get_suite("clean")
    params = suite.validate_params({})
    whole = run_suite("clean", params, context(tmp_path), samples, shards=1)
    split = run_suite("clean", params, context(tmp_path), samples, shards=shards)
    assert whole["metrics"] == split["metrics"]


def test_per_sample_records_published(tmp_path):
    ctx = context(tmp_path)
    samples = random_samples(12)
    run_suite("clean", get_suite("clean").validate_params({}), ctx, samples, shards=3)
    records = ctx.shared["clean"]
    assert list(records) == samples.ids
    r = records[samples.ids[0]]
    assert set(r) >= {"label", "pred", "correct", "confidence", "margin", "topk"}
    assert r["correct"] == (r["pred"] == r["label"])


def test_progress_reaches_one_and_cancel_stops(tmp_path):
    seen = []
    ctx = context(tmp_path)
    ctx.on_progress = lambda s, f: seen.append((s, f))
    run_suite("clean", get_suite("clean").validate_params({}), ctx, random_samples(10), shards=2)
    assert seen[-1] == ("clean", 1.0)
    assert all(b >= a for (_, a), (_, b) in zip(seen, seen[1:]))
    from worker.engine.errors import AuditCancelled

    ctx = context(tmp_path)
    ctx.should_stop = lambda: True
    with pytest.raises(AuditCancelled):
        run_suite("clean", get_suite("clean").validate_params({}), ctx, random_samples(10))


def test_near_chance_warning(tmp_path):
    # A constant model: always predicts class 0, so top-1 is 1/10 on balanced labels.
    clf = tiny_classifier()
    with torch.no_grad():
        clf.model.fc.weight.zero_()
        clf.model.fc.bias.copy_(torch.arange(10, 0, -1).float())
    entry = run_suite("clean", get_suite("clean").validate_params({}), context(tmp_path, clf), random_samples(20))
    assert entry["metrics"]["top1"]["value"] == pytest.approx(0.1)
    assert [w["code"] for w in entry["warnings"]] == ["clean_accuracy_near_chance"]
