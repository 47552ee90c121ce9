"""The perturbation suite end to end: CLI on the demo model, exact sharding, oracles, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.tiny import random_samples, tiny_classifier
from worker.engine.cli import main
from worker.engine.errors import SpecError
from worker.engine.generators import GeneratorError
from worker.engine.metrics import iter_leaves, path_matches
from worker.engine.models import load_classifier
from worker.engine.runner import run_suite
from worker.engine.samples import SampleSet
from worker.engine.suites import get_suite
from worker.engine.suites.base import ArtifactStore, SuiteContext
from worker.engine.suites.perturbation.corruptions import SampleRandom, corrupt, sample_seed
from worker.engine.suites.perturbation.geometric import Transform, apply

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "worker" / "engine" / "assets" / "demo"

SMALL = {
    "corruptions": {"names": ["gaussian_noise", "contrast", "fog"], "severities": [1, 5]},
    "geometric": {"rotations": [-15.0, 0.0, 15.0], "translations": [-2.0, 0.0], "scales": [0.8]},
    "generator_layers": {"eps": [16.0], "steps": 3, "eps_growth": 4.0, "max_eps": 16.0,
                         "reference_batch": 32, "examples": 2},
}
OFF = {"enabled": False}


def context(tmp_path: Path, clf=None, seed: int = 0) -> SuiteContext:
    return SuiteContext(classifier=clf or tiny_classifier(), artifacts=ArtifactStore(tmp_path / "artifacts"),
                        seed=seed)


def digits_samples(n: int) -> SampleSet:
    from worker.engine.datasets import DataRoots, DatasetRef, load_samples

    return load_samples(DatasetRef.parse("builtin:digits", n_samples=n, seed=0), roots=DataRoots(["."]),
                        num_classes=10)


def run(name_params: dict, ctx: SuiteContext, samples: SampleSet, shards: int = 1) -> dict:
    run_suite("clean", get_suite("clean").validate_params({}), ctx, samples, shards=shards)
    params = get_suite("perturbation").validate_params(name_params)
    return run_suite("perturbation", params, ctx, samples, shards=shards)


def test_cli_audit_on_demo_model_validates_and_lists_every_metric(tmp_path, report_validator, data_root):
    cfg = tmp_path / "spec.json"
    cfg.write_text(json.dumps({"suites": {"perturbation": SMALL}}))
    out = tmp_path / "out"
    code = main(["audit", "--quiet", "--model", str(DEMO / "digits_cnn.pt"), "--dataset", "builtin:digits",
                 "--n-samples", "12", "--config", str(cfg), "--out", str(out),
                 "--gate", "perturbation.corruptions.contrast.s1>=0", "--gate", "perturbation.geometric.worst_case>=0",
                 "--gate", "perturbation.generator_layers.fc.success_rate.eps_16>=0"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    report_validator.validate(report)
    entry = report["suites"]["perturbation"]
    metrics = entry["metrics"]
    paths = [p for p, _ in iter_leaves(metrics)]
    catalog = get_suite("perturbation").metric_paths(get_suite("perturbation").validate_params(SMALL))
    assert all(any(path_matches(pat, p) for pat in catalog) for p in paths)
    assert all(any(path_matches(pat, p) for p in paths) for pat in catalog)
    assert {"corruptions", "geometric", "generator_layers"} <= set(metrics)
    gl = metrics["generator_layers"]
    assert list(k for k in gl if k not in ("seeds_drawn", "seeds_kept")) == ["fc", "block1", "block2", "block3"]
    assert gl["seeds_kept"]["value"] >= 9
    for layer in ("fc", "block1", "block2", "block3"):
        assert (out / "artifacts" / "perturbation" / f"generator_{layer}.png").is_file() or \
            gl[layer]["growing_success_rate"]["value"] == 0
    assert metrics["corruptions"]["contrast"]["s5"]["value"] <= metrics["corruptions"]["contrast"]["s1"]["value"]
    assert entry["generator"]["arch"] == "digits_cgen"


def test_shards_merge_exactly(tmp_path):
    clf = load_classifier(DEMO / "digits_cnn.pt")
    samples = digits_samples(8)
    params = {"corruptions": {"names": ["gaussian_noise", "fog"], "severities": [3]},
              "geometric": {"rotations": [0.0, 15.0], "translations": [0.0, 2.0], "scales": [0.8]},
              "generator_layers": {**SMALL["generator_layers"], "layers": ["block1"]}}
    whole = run(params, context(tmp_path / "a", clf), samples)
    split = run(params, context(tmp_path / "b", clf), samples, shards=3)
    assert whole["metrics"] == split["metrics"]
    assert whole["artifacts"] == split["artifacts"]


def test_corruption_and_geometric_metrics_match_a_direct_computation(tmp_path):
    clf = tiny_classifier(seed=3)
    samples = random_samples(12)
    ctx = context(tmp_path, clf, seed=5)
    entry = run({"corruptions": {"names": ["shot_noise", "pixelate"], "severities": [2, 4]},
                 "geometric": {"rotations": [0.0, 90.0], "translations": [0.0, 4.0], "scales": [0.5]},
                 "generator_layers": OFF}, ctx, samples)
    m = entry["metrics"]
    x, y = samples.prepared(clf.card), samples.labels
    errors = []
    for name in ("shot_noise", "pixelate"):
        accs = []
        for s in (2, 4):
            rng = SampleRandom.from_seeds([sample_seed(5, sid, name, s) for sid in samples.ids])
            acc = clf.logits(corrupt(x, name, s, rng)).argmax(1).eq(y).double().mean().item()
            assert m["corruptions"][name][f"s{s}"]["value"] == pytest.approx(acc)
            accs.append(acc)
        errors.append(1 - sum(accs) / 2)
    assert m["corruptions"]["mce"]["value"] == pytest.approx(sum(errors) / 2)
    clean = clf.logits(x).argmax(1).eq(y).double().mean().item()
    assert m["corruptions"]["clean"]["value"] == pytest.approx(clean)
    assert m["corruptions"]["drop"]["value"] == pytest.approx(clean - (1 - sum(errors) / 2))
    hits = []
    for angle in (0.0, 90.0):
        for tx in (0.0, 4.0):
            for ty in (0.0, 4.0):
                ok = clf.logits(apply(x, Transform(angle=angle, tx=tx, ty=ty))).argmax(1).eq(y)
                hits.append(ok)
                key = Transform(angle=angle, tx=tx, ty=ty).key
                assert m["geometric"]["transforms"][key]["value"] == pytest.approx(ok.double().mean().item())
    worst = torch.stack(hits).all(0).double().mean().item()
    assert m["geometric"]["worst_case"]["value"] == pytest.approx(worst)
    assert m["geometric"]["transforms"]["rot_0_tx_0_ty_0"]["value"] == pytest.approx(clean)


def test_generator_part_is_skipped_with_a_warning_without_a_generator(tmp_path):
    entry = run({"corruptions": OFF, "geometric": OFF}, context(tmp_path), random_samples(4))
    assert "generator_layers" not in entry["metrics"]
    assert [w["code"] for w in entry["warnings"]] == ["generator_layers_skipped"]


def test_unknown_layer_is_an_error_naming_the_card_layers(tmp_path):
    clf = load_classifier(DEMO / "digits_cnn.pt")
    with pytest.raises(GeneratorError, match=r"unknown generator layer.*'block9'.*'fc', 'block1'"):
        run({"corruptions": OFF, "geometric": OFF, "generator_layers": {**SMALL["generator_layers"],
             "layers": ["block9"]}}, context(tmp_path, clf), digits_samples(3))


def test_generator_that_does_not_fit_the_model_input(tmp_path):
    clf = tiny_classifier(size=28)
    gl = {**SMALL["generator_layers"], "generator": str(DEMO / "digits_generator.safetensors"), "layers": ["fc"]}
    with pytest.raises(GeneratorError, match="32x32 images but the model takes 28x28.*resize_output"):
        run({"corruptions": OFF, "geometric": OFF, "generator_layers": gl}, context(tmp_path, clf), random_samples(3,
            size=28))
    entry = run({"corruptions": OFF, "geometric": OFF, "generator_layers": {**gl, "resize_output": True}},
                context(tmp_path, clf), random_samples(3, size=28))
    assert "fc" in entry["metrics"]["generator_layers"]


def test_conditional_generator_without_class_information(tmp_path):
    card = json.loads((DEMO / "digits_generator.card.json").read_text())
    del card["class_names"]
    (tmp_path / "g.card.json").write_text(json.dumps(card))
    gl = {"generator": str(DEMO / "digits_generator.safetensors"), "card": str(tmp_path / "g.card.json")}
    with pytest.raises(GeneratorError, match="conditional generator needs class information"):
        run({"corruptions": OFF, "geometric": OFF, "generator_layers": gl}, context(tmp_path), random_samples(3))


def test_generator_classes_must_match_model_classes(tmp_path):
    card = json.loads((DEMO / "digits_generator.card.json").read_text())
    card["class_names"] = [f"c{i}" for i in range(10)]
    (tmp_path / "g.card.json").write_text(json.dumps(card))
    gl = {"generator": str(DEMO / "digits_generator.safetensors"), "card": str(tmp_path / "g.card.json")}
    with pytest.raises(GeneratorError, match="class names must match"):
        run({"corruptions": OFF, "geometric": OFF, "generator_layers": gl}, context(tmp_path), random_samples(3))


@pytest.mark.parametrize("raw, message", [
    ({"generator_layers": {"eps_growth": 0.001, "max_eps": 100.0}}, "at most 5000"),
    ({"generator_layers": {"card": "x.card.json"}}, "give the weights too"),
    ({"corruptions": {"names": ["rain"]}}, "corruptions.names: must be one of"),
    ({"corruptions": {"severities": [0]}}, "corruptions.severities: must be >= 1"),
    ({"geometric": {"padding": "wrap"}}, "geometric.padding: must be one of"),
    ({"colour": {}}, "unknown parameter"),
    ({"generator_layers": {"layers": ["fc", 3]}}, "generator_layers.layers: must be a list of non-empty strings"),
])
def test_bad_parameters_are_spec_errors(raw, message):
    with pytest.raises(SpecError, match=message):
        get_suite("perturbation").validate_params(raw)


def test_fixed_mode_alone_reports_the_smallest_successful_budget(tmp_path):
    clf = load_classifier(DEMO / "digits_cnn.pt")
    gl = {**SMALL["generator_layers"], "modes": ["fixed"], "eps": [4.0, 32.0], "layers": ["fc"]}
    entry = run({"corruptions": OFF, "geometric": OFF, "generator_layers": gl}, context(tmp_path, clf),
                digits_samples(6))
    fc = entry["metrics"]["generator_layers"]["fc"]
    assert "growing_success_rate" not in fc
    flipped = fc["median_eps"]["n"]
    assert flipped >= round(fc["success_rate"]["eps_32"]["value"] * fc["success_rate"]["eps_32"]["n"]) > 0
    assert fc["median_eps"]["value"] in (4.0, 18.0, 32.0)
