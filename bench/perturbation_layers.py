"""Reproduction of Dunn et al. (2020) on the demo models: success rate per generator layer.

Audits the standard and the PGD-trained demo CNN on builtin:digits with the same seeds (same
latents, same spread estimate, same budgets) through the perturbation suite's generator-layer
part, and prints the success rate per layer and budget side by side, coarse -> fine, with
the median eps at success from the growing mode and the ratio PGD / standard.

    python bench/perturbation_layers.py --n-samples 100 --steps 30
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.engine.datasets import DataRoots, DatasetRef, load_samples  # noqa: E402
from worker.engine.models import load_classifier  # noqa: E402
from worker.engine.runner import run_suite  # noqa: E402
from worker.engine.suites import get_suite  # noqa: E402
from worker.engine.suites.base import ArtifactStore, SuiteContext  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "worker" / "engine" / "assets" / "demo"
MODELS = {"standard": DEMO / "digits_cnn.pt", "pgd": DEMO / "digits_cnn_pgd.pt"}


def audit(model: Path, n: int, seed: int, gl: dict, out: Path) -> dict:
    clf = load_classifier(model)
    samples = load_samples(DatasetRef.parse("builtin:digits", n_samples=n, seed=seed), roots=DataRoots(["."]),
                           num_classes=clf.num_classes)
    ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(out / "artifacts"), seed=seed)
    run_suite("clean", get_suite("clean").validate_params({}), ctx, samples)
    params = get_suite("perturbation").validate_params(
        {"corruptions": {"enabled": False}, "geometric": {"enabled": False}, "generator_layers": gl})
    return run_suite("perturbation", params, ctx, samples)["metrics"]["generator_layers"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-samples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eps", type=float, nargs="+", default=[2.0, 4.0, 8.0, 16.0])
    ap.add_argument("--eps-growth", type=float, default=0.5)
    ap.add_argument("--max-eps", type=float, default=32.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared small CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gl = {"eps": args.eps, "steps": args.steps, "eps_growth": args.eps_growth, "max_eps": args.max_eps,
          "examples": 4}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in MODELS.items():
            t0 = time.perf_counter()
            results[name] = audit(path, args.n_samples, args.seed, gl, Path(tmp) / name)
            print(f"# {name}: {time.perf_counter() - t0:.1f} s, seeds kept "
                  f"{results[name]['seeds_kept']['value']:.0f} of {results[name]['seeds_drawn']['value']:.0f}")
    layers = [k for k in results["standard"] if k not in ("seeds_drawn", "seeds_kept")]
    print(f"# builtin:digits, {args.n_samples} samples, seed {args.seed}; Adam {args.steps} steps per eps; "
          "success rate = share of kept seeds whose class flips")
    head = " ".join(f"{'eps ' + format(e, 'g'):>15s}" for e in args.eps)
    print(f"{'layer':8s} {head} {'median eps (grow)':>22s} {'grow success':>15s}")
    print(f"{'':8s} " + " ".join(f"{'std / pgd':>15s}" for _ in args.eps) + f" {'std / pgd (ratio)':>22s} "
          f"{'std / pgd':>15s}")
    for layer in layers:
        s, p = results["standard"][layer], results["pgd"][layer]
        cells = []
        for key in s["success_rate"]:
            cells.append(f"{s['success_rate'][key]['value']:.2f} / {p['success_rate'][key]['value']:.2f}".rjust(15))
        ms, mp = s["median_eps"]["value"], p["median_eps"]["value"]
        ratio = f"{mp / ms:.2f}" if ms and mp else "-"
        med = f"{ms if ms is not None else float('nan'):.2f} / {mp if mp is not None else float('nan'):.2f} ({ratio})"
        grow = f"{s['growing_success_rate']['value']:.2f} / {p['growing_success_rate']['value']:.2f}"
        print(f"{layer:8s} {' '.join(cells)} {med:>22s} {grow:>15s}")


if __name__ == "__main__":
    main()
