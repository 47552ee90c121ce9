"""PGD throughput and early-exit speedup, measured in one run.

1. PGD iterations per second (one forward + backward per sample per iteration) on the same
   model and batch: our PGD, torchattacks.PGD, ART's ProjectedGradientDescent, and the bare
   forward + backward loop of the model. The budget is tiny and the labels are the model's own
   predictions, so no sample succeeds and every implementation runs every step (no early exit).
2. The whole ``attacks`` suite on the non-robust demo model, with early exit (default) against
   the fixed-step baseline (``attack_params.pgd.early_exit=false`` and ``cascade=false``: every PGD step on
   every sample and budget, every attack on every sample).

    python bench/attacks.py                        # CPU, demo digits CNN
    python bench/attacks.py --device cuda --model resnet18 --size 224 --batch 256
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.engine.attacks import PGD  # noqa: E402
from worker.engine.card import ModelCard  # noqa: E402
from worker.engine.classifier import Classifier  # noqa: E402

DEMO = ROOT / "worker" / "engine" / "assets" / "demo"


def load_model(name: str, device: str, size: int) -> Classifier:
    """The demo CNN (TorchScript) or a torchvision architecture with random weights."""
    if name == "demo":
        from worker.engine.models import load_classifier

        return load_classifier(str(DEMO / "digits_cnn.pt"), None, device=device)
    import torchvision

    net = getattr(torchvision.models, name)(num_classes=10)
    card = ModelCard.from_dict({"format": "state_dict", "arch": name, "num_classes": 10, "input_size": [3, size, size],
                                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    return Classifier(net, card, sha256="0" * 64, device=device)


def clock(device: str) -> float:
    """CPU time of this process on the CPU (other jobs on shared cores do not count), wall
    time on a GPU (after a synchronize)."""
    return time.process_time() if device == "cpu" else time.perf_counter()


def timed_round_robin(fns: dict[str, Callable[[], object]], device: str, repeats: int) -> dict[str, float]:
    """Best time of each function, run in turns after one warm-up each, so that a noisy
    machine (shared cores) slows all of them alike; the minimum is the least disturbed run."""
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for fn in fns.values():
        fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock(device)
            fn()
            sync()
            times[name].append(clock(device) - t0)
    return {k: min(v) for k, v in times.items()}


def throughput(clf: Classifier, batch: int, steps: int, repeats: int, device: str) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *clf.input_size, generator=g).to(device)
    with torch.no_grad():
        y = clf(x).argmax(1)
    eps, alpha = 1e-5, 2.5e-6  # too small to flip any prediction: every step is run
    work = batch * steps

    def bare() -> None:
        for _ in range(steps):
            xg = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(clf(xg), y, reduction="sum"), xg)

    ours_attack = PGD(norm="linf", steps=steps, abs_stepsize=alpha, random_start=True)

    def ours() -> None:
        res = ours_attack(clf, x, y, [eps])
        assert not res.success.any()

    fns: dict[str, Callable[[], object]] = {"bare forward+backward": bare, "robustaudit PGD": ours}
    try:
        import torchattacks

        ta = torchattacks.PGD(clf, eps=eps, alpha=alpha, steps=steps, random_start=True)
        fns["torchattacks PGD"] = lambda: ta(x, y)
    except ImportError:
        print("torchattacks not installed: skipped")
    try:
        import numpy as np
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        est = PyTorchClassifier(model=clf, loss=torch.nn.CrossEntropyLoss(), input_shape=clf.input_size,
                                nb_classes=clf.num_classes, clip_values=(0.0, 1.0),
                                device_type="gpu" if device.startswith("cuda") else "cpu")
        art = ProjectedGradientDescent(est, norm=np.inf, eps=eps, eps_step=alpha, max_iter=steps, num_random_init=1,
                                       batch_size=batch, verbose=False)
        xn, yn = x.cpu().numpy(), y.cpu().numpy()
        fns["ART ProjectedGradientDescent"] = lambda: art.generate(xn, y=yn)
    except ImportError:
        print("adversarial-robustness-toolbox not installed: skipped")
    return {k: work / t for k, t in timed_round_robin(fns, device, repeats).items()}


def suite_speedup(device: str, n: int, params: dict, repeats: int) -> dict[bool, dict]:
    """Early exit on and off, alternating ``repeats`` times: best wall time, and the model's
    sample-passes counted by a forward hook (gradient passes = forward+backward), which a
    busy machine cannot distort."""
    import tempfile

    from worker.engine.datasets import DataRoots, DatasetRef, load_samples
    from worker.engine.runner import run_suite
    from worker.engine.suites import get_suite
    from worker.engine.suites.base import ArtifactStore, SuiteContext

    clf = load_model("demo", device, 32)
    samples = load_samples(DatasetRef.parse({"kind": "builtin", "name": "digits", "n_samples": n, "seed": 0}),
                           roots=DataRoots.from_env(), num_classes=10)
    passes = {True: 0, False: 0}

    class Counting(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            passes[torch.is_grad_enabled()] += int(z.shape[0])
            return self.inner(z)

    clf.model = Counting(clf.model)
    out: dict[bool, dict] = {True: {"seconds": []}, False: {"seconds": []}}
    with tempfile.TemporaryDirectory() as tmp:
        warm = SuiteContext(classifier=clf, artifacts=ArtifactStore(Path(tmp) / "warm-up"))
        run_suite("clean", get_suite("clean").validate_params({}), warm, samples.subset(range(4)))
        run_suite("attacks", get_suite("attacks").validate_params(params), warm, samples.subset(range(4)))
        for _ in range(repeats):
            for early in (True, False):
                ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(Path(tmp) / str(early)))
                run_suite("clean", get_suite("clean").validate_params({}), ctx, samples)
                # the fixed-cost baseline: every PGD step on every sample, every attack on every sample
                ap = params.get("attack_params", {})
                pgd = {**ap.get("pgd", {}), "early_exit": early}
                p = get_suite("attacks").validate_params({**params, "cascade": early,
                                                          "attack_params": {**ap, "pgd": pgd}})
                passes[True] = passes[False] = 0
                t0 = clock(device)
                entry = run_suite("attacks", p, ctx, samples)
                out[early]["seconds"].append(clock(device) - t0)
                out[early].update(grad_passes=passes[True], plain_passes=passes[False],
                                  robust=entry["metrics"]["robust_accuracy"],
                                  targeted=entry["metrics"]["targeted"]["success_rate"]["value"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="demo", help="demo, or a torchvision architecture (resnet18, ...)")
    ap.add_argument("--size", type=int, default=32, help="input side for torchvision models")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--suite-samples", type=int, default=100)
    ap.add_argument("--suite-repeats", type=int, default=2)
    ap.add_argument("--skip-suite", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clf = load_model(args.model, args.device, args.size)
    print("times: CPU seconds of this process on cpu, wall seconds on cuda")
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, model {args.model} {tuple(clf.input_size)}, batch {args.batch}, "
          f"steps {args.steps}")
    rates = throughput(clf, args.batch, args.steps, args.repeats, args.device)
    ours = rates["robustaudit PGD"]
    print("\n1. PGD iterations/s (forward+backward per sample), no early exit possible:")
    for name, r in rates.items():
        print(f"  {name:<30} {r:10.1f} it/s   robustaudit / this = {ours / r:5.2f}")
    print(f"  robustaudit PGD reaches {ours / rates['bare forward+backward']:.2f} of the bare throughput")
    if args.skip_suite:
        return
    from worker.engine.suites import get_suite

    # Parts 2a-2d only: the regional, loss-comparison and transfer parts (2e-2g) run unbounded
    # iterative attacks of their own and are measured by bench/attacks_extras.py.
    demo = {**get_suite("attacks").demo_params, "regional": {"enabled": False}, "loss_comparison": {"enabled": False},
            "attacks": ["fgsm", "pgd", "cw"]}
    configs = {"demo parameters (FGSM, PGD, CW, FMN, targeted)": demo,
               "PGD parts only (FGSM, PGD, targeted; no CW, no FMN)": {**demo, "attacks": ["fgsm", "pgd"],
                                                                        "minimal": "none"},
               "PGD parts, budgets where most samples fall (linf 0.1-0.3, l2 2-4, 20 steps)":
                   {**demo, "attacks": ["fgsm", "pgd"], "minimal": "none", "linf_eps": [0.1, 0.2, 0.3],
                    "l2_eps": [2.0, 3.0, 4.0], "attack_params": {**demo["attack_params"], "pgd": {"steps": 20}},
                    "targeted": {**demo["targeted"], "steps": 20}}}
    print(f"\n2. whole attacks suite on the non-robust demo model, {args.suite_samples} digits samples "
          f"(best of {args.suite_repeats} alternating runs; passes = samples through the model):")
    for label, params in configs.items():
        r = suite_speedup(args.device, args.suite_samples, params, args.suite_repeats)
        fast, slow = r[True], r[False]
        same = fast["robust"] == slow["robust"] and fast["targeted"] == slow["targeted"]
        print(f"  {label}:\n"
              f"    early exit  {min(fast['seconds']):7.1f} s  {fast['grad_passes']:9d} fwd+bwd passes "
              f"{fast['plain_passes']:7d} forward-only\n"
              f"    fixed steps {min(slow['seconds']):7.1f} s  {slow['grad_passes']:9d} fwd+bwd passes "
              f"{slow['plain_passes']:7d} forward-only\n"
              f"    speedup {min(slow['seconds']) / min(fast['seconds']):.2f}x in time, "
              f"{slow['grad_passes'] / max(1, fast['grad_passes']):.2f}x in fwd+bwd passes; "
              f"identical results: {same}")

if __name__ == "__main__":
    main()
