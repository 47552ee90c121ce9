"""Cost of the attacks suite's parts 2e-2g and saliency against the base suite, measured in one run.

The base is the suite at its ``demo_params`` with the extra parts off; each configuration
adds one part (regional masks, loss comparison, transfer from the PGD-trained demo CNN, the
saliency part's Grad-CAM), and the last one the first three. Configurations run in turns,
``--repeats`` times; the report gives the best CPU time of this process (other jobs on shared
cores do not count) and the samples through each model (forward-only and gradient passes,
exact), with ratios to the base.

    python bench/attacks_extras.py [--samples 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.engine.datasets import DataRoots, DatasetRef, load_samples  # noqa: E402
from worker.engine.models import load_classifier  # noqa: E402
from worker.engine.runner import run_suite  # noqa: E402
from worker.engine.suites import get_suite  # noqa: E402
from worker.engine.suites.base import ArtifactStore, SuiteContext  # noqa: E402

DEMO = ROOT / "worker" / "engine" / "assets" / "demo"
SURROGATE = {"model": str(DEMO / "digits_cnn_pgd.pt"), "card": None}
#: each part's object: the demo's settings, switched off or on
OFF = {part: {**get_suite("attacks").demo_params.get(part, {}), "enabled": False}
       for part in ("regional", "loss_comparison", "saliency")}
ON = {part: {**obj, "enabled": True} for part, obj in OFF.items()}
CONFIGS = {
    "base (2a-2d, demo_params)": {},
    "+ regional (2e)": {"regional": ON["regional"]},
    "+ loss comparison (2f)": {"loss_comparison": ON["loss_comparison"]},
    "+ transfer (2g)": {"transfer": SURROGATE},
    "+ saliency (Grad-CAM)": {"saliency": ON["saliency"]},
    "+ all three (2e-2g)": {"regional": ON["regional"], "loss_comparison": ON["loss_comparison"],
                           "transfer": SURROGATE},
}


class Counting(torch.nn.Module):
    """Counts the samples that go through the wrapped model, by grad mode."""

    def __init__(self, inner: torch.nn.Module, counts: dict[bool, int]) -> None:
        super().__init__()
        self.inner, self.counts = inner, counts

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.counts[torch.is_grad_enabled()] += int(z.shape[0])
        return self.inner(z)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    clf = load_classifier(str(DEMO / "digits_cnn.pt"), None, device="cpu")
    counts = {True: 0, False: 0}
    clf.model = Counting(clf.model, counts)
    samples = load_samples(DatasetRef.parse({"kind": "builtin", "name": "digits", "n_samples": args.samples,
                                             "seed": 0}), roots=DataRoots.from_env(), num_classes=10)
    suite = get_suite("attacks")
    demo = {**suite.demo_params, **OFF}
    best: dict[str, float] = {}
    passes: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for k, (name, extra) in enumerate(CONFIGS.items()):
                ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(Path(tmp) / f"{r}-{k}"), seed=0)
                params = suite.validate_params({**demo, **extra})
                counts[True] = counts[False] = 0
                t0 = time.process_time()
                run_suite("attacks", params, ctx, samples)
                best[name] = min(best.get(name, float("inf")), time.process_time() - t0)
                passes[name] = (counts[True], counts[False])  # audited model only (the surrogate is not wrapped)
    base = next(iter(CONFIGS))
    print(f"attacks suite on the demo CNN, {args.samples} digits samples, 1 thread, best CPU time of "
          f"{args.repeats} runs in turns; passes = samples through the audited model (gradient / forward-only)")
    print(f"{'configuration':28s} {'CPU s':>7s} {'x base':>7s} {'grad passes':>12s} {'fwd passes':>11s} {'x base':>7s}")
    total_base = sum(passes[base])
    for name in CONFIGS:
        g, f = passes[name]
        print(f"{name:28s} {best[name]:7.2f} {best[name] / best[base]:7.2f} {g:12,d} {f:11,d} "
              f"{(g + f) / total_base:7.2f}")


if __name__ == "__main__":
    main()
