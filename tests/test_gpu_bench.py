"""bench/gpu.sh and bench/gpu_collect.py without a GPU: the collector on recorded outputs of each
shape (ok, failed, timed out, skipped, unparsable), and the script end to end on a budget too small
to run anything, which must still write one JSON document naming every benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from gpu_collect import main as collect_main  # noqa: E402

FRAGILE_OUT = '{\n  "ours_crops_per_s": 351.6,\n  "ours_over_naive": 52.76\n}\n(b)/(a) ours/naive = 52.76x\n'
PGD_OUT = """torch 2.15.0, device cuda, threads 1, cpus 16, model resnet18 (3, 224, 224), batch 128, steps 20

1. PGD iterations/s (forward+backward per sample), no early exit possible:
  bare forward+backward               78.6 it/s   robustaudit / this =  2.74
  robustaudit PGD                    215.7 it/s   robustaudit / this =  1.00
  torchattacks PGD                   110.5 it/s   robustaudit / this =  1.95
"""
CORRUPTIONS_OUT = """# 2 images 3x32x32, severity 3; device cuda
corruption          ours img/s  ref img/s   ratio
gaussian_noise         14459.7        nan     nan
glass_blur               120.5        4.5    26.8
all                     1000.0        nan     nan   (images/s over all corruptions; ratio of total times)
"""


def record(run: Path, name: str, rc: int = 0, out: str = "", err: str = "", **meta: object) -> None:
    (run / f"{name}.meta.json").write_text(json.dumps(
        {"cmd": ["python", f"bench/{name}.py"], "rc": rc, "timed_out": rc in (124, 137), "timeout_s": 90,
         "wall_s": 1.0, **meta}))
    (run / f"{name}.out").write_text(out)
    (run / f"{name}.err").write_text(err)


def test_collector_reads_every_shape_and_keeps_evidence_of_failures(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    record(run, "fragile", out=FRAGILE_OUT)
    record(run, "pgd", out=PGD_OUT)
    record(run, "corruptions", out=CORRUPTIONS_OUT)
    record(run, "autoattack", rc=124, out="AutoAttack standard evaluation: resnet18\n", err="Terminated")
    (run / "distributed.meta.json").write_text(json.dumps({"skipped": "1 GPU(s)"}))
    out = tmp_path / "gpu.json"
    assert collect_main(["--run", str(run), "--out", str(out), "fragile", "pgd", "corruptions", "autoattack",
                         "distributed", "nothing"]) == 0
    doc = json.loads(out.read_text())
    assert doc["statuses"] == {"fragile": "ok", "pgd": "ok", "corruptions": "ok", "autoattack": "timeout",
                               "distributed": "skipped", "nothing": "missing"}
    b = doc["benchmarks"]
    assert b["fragile"]["result"] == {"ours_crops_per_s": 351.6, "ours_over_naive": 52.76}
    assert b["pgd"]["result"]["iterations_per_s"]["torchattacks PGD"] == 110.5
    assert b["pgd"]["result"]["ours_over"]["bare forward+backward"] == round(215.7 / 78.6, 3)
    rows = b["corruptions"]["result"]["per_corruption"]
    assert set(rows) == {"gaussian_noise", "glass_blur", "all"}
    assert rows["gaussian_noise"]["reference_images_per_s"] is None and rows["glass_blur"]["ratio"] == 26.8
    assert "resnet18" in b["autoattack"]["stdout_tail"] and b["autoattack"]["stderr_tail"] == "Terminated"
    assert "stdout_tail" not in b["fragile"]


def test_unparsable_and_failed_outputs_are_not_ok(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    record(run, "fragile", out="no json here\n")
    record(run, "pgd", rc=1, out=PGD_OUT, err="Traceback ...\nRuntimeError: CUDA out of memory")
    out = tmp_path / "gpu.json"
    collect_main(["--run", str(run), "--out", str(out), "fragile", "pgd"])
    doc = json.loads(out.read_text())
    assert doc["statuses"] == {"fragile": "unparsed", "pgd": "failed"}
    assert "out of memory" in doc["benchmarks"]["pgd"]["stderr_tail"]


def test_script_on_a_spent_budget_still_writes_one_document(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--quick", "--budget", "1", "--out", str(out)],
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert list(doc["statuses"]) == ["fragile", "pgd", "autoattack", "corruptions", "distributed"]
    assert all(s == "skipped" for s in doc["statuses"].values())
    assert "budget" in doc["benchmarks"]["fragile"]["skipped"]
    assert doc["quick"] is True and doc["environment"]["torch"] == __import__("torch").__version__
