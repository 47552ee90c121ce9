"""The engine runs with torch alone, as on a bare GPU box: no numpy, Pillow, torchvision or matplotlib.

A subprocess makes those imports fail, then audits the demo model on builtin:digits.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BOOT = """
import sys
BLOCKED = {"numpy", "PIL", "torchvision", "matplotlib", "scipy", "sklearn", "safetensors"}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)", name=name)
        return None

sys.meta_path.insert(0, Block())
from worker.engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_audit_with_torch_only(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", BOOT, "audit", "--quiet", "--model",
         str(ROOT / "worker/engine/assets/demo/digits_cnn.pt"), "--dataset", "builtin:digits",
         "--n-samples", "20", "--gate", "clean.top1>=0.8", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "pass"
    assert report["environment"]["torchvision"] is None


def test_missing_package_for_artifacts_is_a_clear_error_not_exit_1(tmp_path):
    config = tmp_path / "spec.json"
    config.write_text(json.dumps({
        "model": str(ROOT / "worker/engine/assets/demo/digits_cnn.pt"),
        "dataset": {"kind": "builtin", "name": "digits", "n_samples": 4},
        "suites": {"fragile": {"region_fractions": [0.9], "example_pairs": 1}}}))
    proc = subprocess.run([sys.executable, "-c", BOOT, "audit", "--quiet", "--config", str(config),
                           "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "'numpy' is missing" in proc.stderr
    assert not (tmp_path / "out" / "report.json").exists()
