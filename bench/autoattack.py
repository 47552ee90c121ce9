"""AutoAttack's standard evaluation: our ``autoattack`` set against torchattacks and ART, in one run.

Same model (the demo digits CNN, or a torchvision architecture), same samples (builtin:digits,
seeded) and same budget (L-inf eps); for each implementation the wall time and the robust
accuracy (share of all samples classified correctly on the adversarial; clean mistakes count as
non-robust). Printed as a table and written as JSON.

- ours: the attacks suite with ``attacks: ["autoattack"]`` (APGD-CE, APGD-T with the DLR loss
  at the top-9 other classes, FAB-T, Square with 5000 queries; each on what is still robust,
  early exit per sample), through ``run_suite`` as an audit runs it (the clean probe included);
- torchattacks 3.5.1 at AutoAttack's published budgets: its APGD-CE, APGD-T (9 targets), FAB-T
  (9 targets) with 100 iterations and one restart each, and Square with 5000 queries, in a
  ``MultiAttack`` (each on what is still robust) -- the budgets our set uses;
- torchattacks 3.5.1 as shipped, ``AutoAttack(version="standard")``, for reference only: it
  builds APGD, APGD-T and FAB with their default ``steps=10``, a tenth of the published
  iterations (Square keeps 5000 queries), so it is not an equal budget;
- ART 1.20.1: ``AutoAttack`` with APGD-CE, APGD-DLR (100 iterations, one restart each) and
  Square (5000 queries, one restart). ART has neither APGD-T over the top-k targets nor FAB,
  and its default list (five restarts each, DeepFool, Square with five restarts) takes hours
  on a CPU, so this list is the nearest affordable equivalent.

    python bench/autoattack.py                               # CPU, 100 digits, eps 0.1
    python bench/autoattack.py --eps 0.03137 --out var/bench/autoattack.json
    python bench/autoattack.py --device cuda --model resnet18 --size 224
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.engine.classifier import Classifier  # noqa: E402

DEMO = ROOT / "worker" / "engine" / "assets" / "demo"
SHIPPED = "torchattacks AA (10 steps)"


def load(model: str, device: str, size: int) -> Classifier:
    """The demo CNN, or a torchvision architecture with random weights (a speed comparison only)."""
    if model == "demo":
        from worker.engine.models import load_classifier

        return load_classifier(str(DEMO / "digits_cnn.pt"), None, device=device)
    import torchvision

    from worker.engine.card import ModelCard

    net = getattr(torchvision.models, model)(num_classes=10)
    card = ModelCard.from_dict({"format": "state_dict", "arch": model, "num_classes": 10, "input_size": [3, size, size],
                                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    return Classifier(net, card, sha256="0" * 64, device=device)


def samples_for(clf: Classifier, n: int):  # -> SampleSet
    from worker.engine.datasets import DataRoots, DatasetRef, load_samples

    return load_samples(DatasetRef.parse({"kind": "builtin", "name": "digits", "n_samples": n, "seed": 0}),
                        roots=DataRoots.from_env(), num_classes=clf.num_classes)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def accuracy(clf: Classifier, adv: torch.Tensor, y: torch.Tensor) -> float:
    return float(clf(adv.to(clf.device)).argmax(1).eq(y).double().mean())


def ours(clf: Classifier, samples, eps: float) -> tuple[float, dict]:
    from worker.engine.runner import run_suite
    from worker.engine.suites import get_suite
    from worker.engine.suites.attacks.params import eps_key
    from worker.engine.suites.base import ArtifactStore, SuiteContext

    params = get_suite("attacks").validate_params({"norms": ["linf"], "linf_eps": [eps], "attacks": ["autoattack"],
                                                   "minimal": "none", "targeted": {"enabled": False}})
    with tempfile.TemporaryDirectory() as tmp:
        ctx = SuiteContext(classifier=clf, artifacts=ArtifactStore(Path(tmp)), seed=0)
        run_suite("clean", get_suite("clean").validate_params({}), ctx, samples)
        entry = run_suite("attacks", params, ctx, samples)
    m = entry["metrics"]
    robust = m["robust_accuracy"]["linf"][eps_key(eps)]["value"]
    after = {a: m["per_attack"]["linf"][a][eps_key(eps)]["value"] for a in entry["metadata"]["attacks"]["linf"]}
    return robust, {"after_each": after, "cost": entry["metadata"]["cost"]["linf"]}


def torchattacks_aa(clf: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[float, dict]:
    import torchattacks

    atk = torchattacks.AutoAttack(clf, norm="Linf", eps=eps, version="standard", n_classes=clf.num_classes, seed=0)
    return accuracy(clf, atk(x, y), y), {"version": "standard", "torchattacks": torchattacks.__version__}


def torchattacks_published(clf: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[float, dict]:
    import torchattacks as ta

    k = clf.num_classes
    atk = ta.MultiAttack([
        ta.APGD(clf, norm="Linf", eps=eps, steps=100, n_restarts=1, loss="ce", seed=0),
        ta.APGDT(clf, norm="Linf", eps=eps, steps=100, n_restarts=1, n_classes=k, seed=0),
        ta.FAB(clf, norm="Linf", eps=eps, steps=100, n_restarts=1, multi_targeted=True, n_classes=k, seed=0),
        ta.Square(clf, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, p_init=0.8, seed=0),
    ])
    return accuracy(clf, atk(x, y), y), {"steps": 100, "n_queries": 5000, "torchattacks": ta.__version__}


def art_aa(clf: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float, batch: int) -> tuple[float, dict]:
    import art
    import numpy as np
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack
    from art.estimators.classification import PyTorchClassifier

    est = PyTorchClassifier(model=clf, loss=torch.nn.CrossEntropyLoss(), input_shape=clf.input_size,
                            nb_classes=clf.num_classes, clip_values=(0.0, 1.0),
                            device_type="gpu" if clf.device.type == "cuda" else "cpu")
    attacks = [AutoProjectedGradientDescent(est, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100,
                                            nb_random_init=1, batch_size=batch, loss_type=loss, verbose=False)
               for loss in ("cross_entropy", "difference_logits_ratio")]
    attacks.append(SquareAttack(est, norm=np.inf, eps=eps, max_iter=5000, p_init=0.8, nb_restarts=1,
                                batch_size=batch, verbose=False))
    aa = AutoAttack(est, norm=np.inf, eps=eps, attacks=attacks, batch_size=batch)
    adv = aa.generate(x.cpu().numpy(), y=y.cpu().numpy())
    return accuracy(clf, torch.from_numpy(adv), y), {"attacks": ["apgd-ce", "apgd-dlr", "square"],
                                                       "art": art.__version__}


def timed(fn: Callable[[], tuple[float, dict]], device: str) -> tuple[float, float, dict]:
    sync(device)
    t0 = time.perf_counter()
    robust, info = fn()
    sync(device)
    return time.perf_counter() - t0, robust, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="demo, or a torchvision architecture (random weights)")
    ap.add_argument("--size", type=int, default=224, help="input size of a torchvision model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1, help="L-inf budget in [0, 1] pixel units")
    ap.add_argument("--batch", type=int, default=128, help="ART's batch size")
    ap.add_argument("--skip", action="append", default=[], choices=["torchattacks", "torchattacks-shipped", "art"])
    ap.add_argument("--out", default=str(ROOT / "var" / "bench" / "autoattack.json"))
    args = ap.parse_args()

    clf = load(args.model, args.device, args.size)
    samples = samples_for(clf, args.samples)
    x = samples.prepared(clf.card).to(clf.device)
    y = samples.labels.to(clf.device)
    clean = accuracy(clf, x, y)
    runs: dict[str, Callable[[], tuple[float, dict]]] = {"robustaudit autoattack": lambda: ours(clf, samples, args.eps)}
    if "torchattacks" not in args.skip:
        runs["torchattacks (published)"] = lambda: torchattacks_published(clf, x, y, args.eps)
    if "torchattacks-shipped" not in args.skip:
        runs[SHIPPED] = lambda: torchattacks_aa(clf, x, y, args.eps)
    if "art" not in args.skip:
        runs["ART AutoAttack"] = lambda: art_aa(clf, x, y, args.eps, args.batch)
    print(f"AutoAttack standard evaluation: {args.model}, {args.samples} builtin:digits samples, L-inf eps "
          f"{args.eps:g}, {args.device} ({torch.get_num_threads()} threads); clean accuracy {clean:.3f}")
    print(f"{'implementation':<28}{'seconds':>10}{'robust acc':>12}", flush=True)
    rows = {}
    for name, fn in runs.items():
        seconds, robust, info = timed(fn, args.device)
        rows[name] = {"seconds": round(seconds, 2), "robust_accuracy": robust, **info}
        print(f"{name:<28}{seconds:>10.1f}{robust:>12.3f}", flush=True)
    mine = rows["robustaudit autoattack"]
    # the target is against peers at equal budgets; the shipped torchattacks runs a tenth of the iterations
    peers = {k: v for k, v in rows.items() if k not in ("robustaudit autoattack", SHIPPED)}
    summary: dict[str, object] = {}
    if peers:
        fastest = min(peers, key=lambda k: peers[k]["seconds"])
        summary = {"fastest_peer": fastest, "speedup_vs_fastest_peer": round(peers[fastest]["seconds"]
                                                                               / mine["seconds"], 2),
                   "robust_accuracy_minus_lowest_peer_points": round(
                       100 * (mine["robust_accuracy"] - min(p["robust_accuracy"] for p in peers.values())), 1)}
    result = {"model": args.model, "device": args.device, "samples": args.samples, "eps": args.eps,
              "norm": "linf", "clean_accuracy": clean, "threads": torch.get_num_threads(), "runs": rows,
              "summary": summary}
    for k, v in summary.items():
        print(f"{k}: {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
