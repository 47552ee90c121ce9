"""Parts 2e-2g end to end through the CLI: the demo CNN audited with the PGD-trained demo CNN
as surrogate, on builtin:digits; the report validates and the artifacts exist."""

import json

import pytest

from worker.engine.cli import main

PARAMS = {"norms": ["linf"], "attacks": ["fgsm", "pgd"], "linf_eps": [0.1, 0.2],
          "attack_params": {"pgd": {"steps": 5}},
          "minimal": "none", "targeted": {"enabled": False},
          "regional": {"enabled": True, "shapes": ["square", "random"], "fractions": [0.28], "steps": 10, "step": 0.03},
          "loss_comparison": {"enabled": True, "steps": 10, "step": 0.02}}


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    from tests.conftest import DEMO

    out = tmp_path_factory.mktemp("attacks_extras_cli")
    surrogate = {"model": str(DEMO / "digits_cnn_pgd.pt"), "card": None}
    args = ["audit", "--quiet", "--model", str(DEMO / "digits_cnn.pt"), "--dataset", "builtin:digits",
            "--n-samples", "16", "--suite", "attacks", "--out", str(out / "run"), "--shards", "2",
            "--set", f"attacks.transfer={json.dumps(surrogate)}",
            "--gate", "attacks.regional.untargeted.full.success_rate>=0.5"]
    for k, v in PARAMS.items():
        args += ["--set", f"attacks.{k}={json.dumps(v)}"]
    code = main(args)
    return code, json.loads((out / "run" / "report.json").read_text()), out / "run"


def test_report_validates_with_regional_loss_and_transfer(demo_report, report_validator):
    code, report, out = demo_report
    report_validator.validate(report)
    assert code == 0 and report["verdict"] == "pass"
    entry = report["suites"]["attacks"]
    m = entry["metrics"]
    attacked = 16 - m["not_attacked"]["value"]
    assert m["regional"]["untargeted"]["square"]["f_0p28"]["success_rate"]["n"] == attacked
    assert set(m["loss_comparison"]) == {"ce_l2", "sign_ce", "margin"}
    assert m["loss_comparison"]["sign_ce"]["success_rate"]["value"] > 0.5
    pgd = m["transfer"]["linf"]["pgd"]["eps_0p2"]
    assert pgd["surrogate_success"]["n"] == 16 - m["transfer"]["not_attacked"]["value"]
    assert pgd["transfer_rate"]["n"] > 0
    names = {a.rsplit("/", 1)[1] for a in entry["artifacts"]}
    assert {"regional_mask_square_f_0p28.png", "regional_mask_random_f_0p28.png", "loss_comparison.png",
            "loss_comparison.json"} <= names
    for art in entry["artifacts"]:
        assert (out / art).is_file(), art
