"""The attacks suite end to end through the CLI on the demo model and builtin:digits."""

import json

import pytest

from worker.engine.cli import main

PARAMS = {"linf_eps": [0.05, 0.1, 0.2], "l2_eps": [0.5, 1.0, 2.0],
          "attack_params": {"pgd": {"steps": 5}, "cw": {"steps": 5, "binary_search_steps": 1}, "fmn": {"steps": 20},
                            "square": {"n_queries": 100}},
          "targeted": {"eps": 0.2, "steps": 5}}


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    from tests.conftest import DEMO

    out = tmp_path_factory.mktemp("attacks_cli")
    args = ["audit", "--quiet", "--model", str(DEMO / "digits_cnn.pt"), "--dataset", "builtin:digits",
            "--n-samples", "30", "--suite", "attacks", "--out", str(out / "run"), "--shards", "2",
            "--gate", "attacks.robust_accuracy.linf.eps_0p05>=0.5", "--gate", "attacks.targeted.mimic.3>=0"]
    for k, v in PARAMS.items():
        args += ["--set", f"attacks.{k}={json.dumps(v)}"]
    code = main(args)
    return code, json.loads((out / "run" / "report.json").read_text()), out / "run"


def test_report_validates_and_gates_apply(demo_report, report_validator):
    code, report, _ = demo_report
    report_validator.validate(report)
    assert code == 0 and report["verdict"] == "pass"
    entry = report["suites"]["attacks"]
    sanity = {"probabilities_not_logits", "zero_gradients", "nan_gradients", "randomized_model",
              "weaker_attack_stronger", "clean_near_chance"}
    assert not sanity & {w["code"] for w in entry["warnings"]}  # a normal model trips no sanity flag
    m = entry["metrics"]
    ra = [m["robust_accuracy"]["linf"][k]["value"] for k in ("eps_0p05", "eps_0p1", "eps_0p2")]
    assert ra[0] >= ra[1] >= ra[2] and ra[0] > ra[2]
    assert m["robust_accuracy"]["linf"]["eps_0p1"]["n"] == 30


def test_targeted_and_suitability_consistent(demo_report):
    _, report, out = demo_report
    entry = report["suites"]["attacks"]
    for art in entry["artifacts"]:
        assert (out / art).is_file(), art
    m = entry["metrics"]
    matrix = json.loads((out / "artifacts" / "attacks" / "targeted_matrix.json").read_text())
    names = matrix["class_names"]
    stats = pytest.importorskip("scipy.stats")
    modify = [sum(matrix["successes"][c]) / sum(matrix["attempts"][c]) for c in range(10)]
    cols = [[row[c] for row in matrix["successes"]] for c in range(10)]
    tries = [[row[c] for row in matrix["attempts"]] for c in range(10)]
    mimic = [sum(cols[c]) / sum(tries[c]) for c in range(10)]
    assert [m["targeted"]["modify"][n]["value"] for n in names] == pytest.approx(modify)
    assert m["targeted"]["spearman"]["value"] == pytest.approx(stats.spearmanr(modify, mimic)[0])
    assert m["targeted"]["easiest_to_modify"]["value"] == pytest.approx(max(modify))
    assert set(m["targeted"]["groups"]["modify"]) == {"round", "straight", "curved"}
    s = m["suitability"]
    flags = json.loads((out / "artifacts" / "attacks" / "suitability_flags.json").read_text())
    assert s["flagged"]["value"] == sum(bool(v) for v in flags.values())
    assert s["flags"]["misclassified"]["value"] == m["not_attacked"]["value"]
    # a suitability flag on any image is a warning that says what to change (at most one per norm)
    codes = [w["code"] for w in entry["warnings"]]
    for flag in ("falls_at_every_budget", "falls_at_no_budget", "low_margin"):
        assert (flag in codes) == (s["flags"][flag]["value"] > 0), flag
    assert s["unflagged"]["robust_accuracy"]["linf"]["eps_0p1"]["n"] == 30 - s["flagged"]["value"]
    mis = m["misclassification"]["linf"]
    assert mis["top3"]["value"] <= mis["top5"]["value"]
