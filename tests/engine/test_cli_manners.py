"""The CLI's manners: --version, a closed pipe, warnings in the summary, a reused --out, and the
``robustaudit`` script without the service stack."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from service.cli import main as script_main
from tests.tiny import TinyNet
from worker.engine import __version__
from worker.engine.cli import EXIT_PIPE, main

ROOT = Path(__file__).resolve().parents[2]

# The robustaudit script with the service stack made unimportable, as after `pip install robustaudit`.
NO_SERVICE = """
import sys
BLOCKED = {"flask", "flask_smorest", "marshmallow", "werkzeug", "celery", "kombu", "sqlalchemy", "alembic",
           "gunicorn", "redis", "psycopg", "yaml", "croniter", "prometheus_client"}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)", name=name)
        return None

sys.meta_path.insert(0, Block())
from service.cli import main
code = main(sys.argv[1:])
assert not BLOCKED & {m.split(".")[0] for m in sys.modules}, "a service package was imported"
sys.exit(code)
"""


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(TinyNet(1, 10, seed=1)).save(str(tmp_path / "tiny.pt"))
    (tmp_path / "tiny.card.json").write_text(json.dumps({
        "format": "torchscript", "num_classes": 10, "input_size": [1, 32, 32], "mean": [0.5], "std": [0.5]}))
    return tmp_path / "tiny.pt"


@pytest.mark.parametrize("entry", [main, script_main])
def test_version(entry, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        entry(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"robustaudit {__version__}"


def test_closed_pipe_is_quiet() -> None:
    """`robustaudit metrics | head -1`: the reader is gone before we write; no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "metrics"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_PIPE
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_summary_prints_dataset_warnings(tiny_model: Path, tmp_path: Path, capsys, data_root) -> None:
    card = tmp_path / "letters.card.json"
    card.write_text(json.dumps({"format": "torchscript", "num_classes": 10, "input_size": [1, 32, 32],
                                "class_names": list("abcdefghij")}))
    code = main(["audit", "--model", str(tiny_model), "--card", str(card), "--dataset", "builtin:digits",
                 "--classes", "3", "--n-samples", "5000", "--out", str(tmp_path / "out"), "--allow-no-gates"])
    assert code == 0
    out = capsys.readouterr().out
    assert "verdict: none (no gates were set)" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    n = report["dataset"]["n_samples"]
    assert 0 < n < 5000
    codes = [w["code"] for w in report["dataset"]["warnings"]]
    assert codes == ["n_samples_above_dataset", "class_names_differ"]
    assert f"warning [n_samples_above_dataset]: 5000 samples were asked for but the dataset has {n}" in out
    assert "warning [class_names_differ]" in out


def test_reused_out_keeps_only_this_run(tiny_model: Path, tmp_path: Path, data_root) -> None:
    out = tmp_path / "out"
    stale = out / "artifacts" / "fragile" / "r0p9_digits_1.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's map")
    (out / "report.html").write_text("an earlier report")
    theirs = [out / "notes.txt", out / "artifacts" / "mine.txt", out / "artifacts" / "custom" / "x.bin"]
    for path in theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not ours")
    target = tmp_path / "elsewhere.png"
    target.write_text("outside")
    (out / "artifacts" / "attacks").mkdir()
    (out / "artifacts" / "attacks" / "link.png").symlink_to(target)
    code = main(["audit", "--quiet", "--model", str(tiny_model), "--dataset", "builtin:digits", "--n-samples", "10",
                 "--out", str(out), "--allow-no-gates"])
    assert code == 0
    assert not stale.exists() and not stale.parent.exists()
    assert (out / "report.html").read_text() != "an earlier report"  # this run's page replaced it
    assert all(p.read_text() == "not ours" for p in theirs)
    assert target.read_text() == "outside"  # a link in our folder is removed, never followed
    assert not (out / "artifacts" / "attacks" / "link.png").is_symlink()
    assert (out / "report.json").exists()


def test_script_audits_without_the_service_stack(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", NO_SERVICE, "audit", "--quiet", "--model",
         str(ROOT / "worker/engine/assets/demo/digits_cnn.pt"), "--dataset", "builtin:digits",
         "--n-samples", "20", "--gate", "clean.top1>=0.8", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["verdict"] == "pass"
    proc = subprocess.run([sys.executable, "-c", NO_SERVICE, "migrate"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "'migrate' needs the service stack" in proc.stderr and "robustaudit[service]" in proc.stderr
