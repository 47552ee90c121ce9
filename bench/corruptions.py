"""Throughput of our tensor corruptions against the reference implementations, same images.

For each ImageNet-C corruption at one severity: ours corrupts the whole batch in one call on
the chosen device; the reference (imagecorruptions 1.1.2, corrupt-tta 0.1.7 for glass_blur;
see tests/engine/perturbation/reference_corruptions.py) corrupts one NumPy image at a time.
Prints images per second for both and their ratio, measured in this run.

    python bench/corruptions.py --size 224 --n 16 --severity 3 [--device cuda]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.engine.perturbation.reference_corruptions import picture, reference  # noqa: E402
from worker.engine.suites.perturbation.corruptions import CORRUPTIONS, SampleRandom, corrupt  # noqa: E402


def images(n: int, size: int, channels: int) -> torch.Tensor:
    """n distinct test pictures: the shared test image, shifted and with per-image noise."""
    base = torch.nn.functional.interpolate(picture(channels)[None], size=(size, size), mode="bilinear",
                                           align_corners=False)[0]
    g = torch.Generator().manual_seed(0)
    out = [(base.roll(shifts=(i * 3, i * 5), dims=(1, 2)) + 0.02 * torch.randn(base.shape, generator=g)).clamp(0, 1)
           for i in range(n)]
    return torch.stack(out)


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--channels", type=int, default=3, choices=(1, 3))
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the references use one core)")
    ap.add_argument("--no-reference", action="store_true", help="time ours only (no imagecorruptions installed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    x = images(args.n, args.size, args.channels)
    xd = x.to(dev)
    names = args.only or list(CORRUPTIONS)
    print(f"# {args.n} images {args.channels}x{args.size}x{args.size}, severity {args.severity}; device {dev}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'corruption':18s} {'ours img/s':>11s} {'ref img/s':>10s} {'ratio':>7s}")
    tot_ours = tot_ref = 0.0
    for name in names:
        def ours(name: str = name) -> None:
            rng = SampleRandom.from_seeds(range(args.n), dev)
            with torch.no_grad():
                corrupt(xd, name, args.severity, rng)
            if dev.type == "cuda":
                torch.cuda.synchronize()

        def ref(name: str = name) -> None:
            for i in range(args.n):
                reference(name, x[i], args.severity, seed=i)

        ours()  # warm-up
        t_ours = timed(ours, args.repeats)
        t_ref = float("nan") if args.no_reference else timed(ref, args.repeats)
        tot_ours += t_ours
        tot_ref += t_ref
        print(f"{name:18s} {args.n / t_ours:11.1f} {args.n / t_ref:10.1f} {t_ref / t_ours:7.1f}")
    print(f"{'all':18s} {args.n * len(names) / tot_ours:11.1f} {args.n * len(names) / tot_ref:10.1f} "
          f"{tot_ref / tot_ours:7.1f}   (images/s over all corruptions; ratio of total times)")


if __name__ == "__main__":
    main()
