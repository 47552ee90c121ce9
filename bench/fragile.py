"""Benchmark of the fragile suite's crop + resize + classify path, in crops per second.

Measures, in one run on one device:
  (a) the naive loop: one F.interpolate and one forward pass per crop, result read back per crop
      (timed on the first --naive-crops crops, and the rate extrapolated: said in the output);
  (b) our path: CropClassifier.scan over every crop of C_l and C_{l-2} of one image;
  (c) the model's bare forward pass on pre-made batches of the same size and precision;
and prints (b)/(a) and (b)/(c). Needs torch (and torchvision for --model resnet50) only.

  python bench/fragile.py                                   # CPU: demo digits CNN, a 64x64 image
  python bench/fragile.py --device cuda --model resnet50 --image-size 500x375 --r 0.2 --batch-size 256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.engine.batching import BatchSize  # noqa: E402
from worker.engine.card import ModelCard  # noqa: E402
from worker.engine.classifier import Classifier  # noqa: E402
from worker.engine.suites.fragile.crops import CropResizer, reference_crop  # noqa: E402
from worker.engine.suites.fragile.params import Precision, region_side  # noqa: E402
from worker.engine.suites.fragile.scan import (  # noqa: E402
    CropClassifier,
    Segment,
    autocast_dtype,
    channels_last_model,
)

DEMO = Path(__file__).resolve().parents[1] / "worker" / "engine" / "assets" / "demo" / "digits_cnn.pt"


def load_model(name: str, device: torch.device) -> Classifier:
    if name == "demo":
        from worker.engine.models import load_classifier

        return load_classifier(str(DEMO), None, device=device)
    import torchvision

    arch = getattr(torchvision.models, name)
    card = ModelCard.from_dict({"format": "safetensors", "arch": name, "num_classes": 1000,
                                "input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406],
                                "std": [0.229, 0.224, 0.225]})
    return Classifier(arch(weights=None), card, sha256="0" * 64, device=device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="demo", help="demo (digits CNN) or a torchvision architecture, e.g. resnet50")
    p.add_argument("--image-size", default=None, help="WxH of the image (default 64x64 for demo, 500x375 else)")
    p.add_argument("--r", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=None, help="default: the model's automatic batch size")
    p.add_argument("--precision", default="auto", choices=[x.value for x in Precision])
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--naive-crops", type=int, default=300, help="crops timed for the naive loop")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best rate of each is kept")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clf = load_model(args.model, device)
    w, h = map(int, (args.image_size or ("64x64" if args.model == "demo" else "500x375")).split("x"))
    c, out_h, out_w = clf.input_size
    image = torch.rand(c, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    side = region_side(args.r, h, w)
    segments = [Segment.of(0, side, h, w), Segment.of(0, side - 2, h, w)]
    total = sum(s.count for s in segments)
    batch = args.batch_size or clf.batch.size
    amp = autocast_dtype(Precision(args.precision), device)
    use_cl = device.type == "cuda" and not args.no_channels_last
    resizer = CropResizer((out_h, out_w), device=device)
    label = 0

    def amp_ctx() -> contextlib.AbstractContextManager[object]:
        return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()

    with channels_last_model(clf, use_cl) as cl, torch.no_grad():
        scanner = CropClassifier(clf, resizer, top_k=1, autocast=amp, channels_last=cl, batch=BatchSize(batch))
        x = torch.rand(batch, c, out_h, out_w, device=device)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        # The same batch sizes as (b): full batches and the same remainder.
        sizes = [batch] * (total // batch) + ([total % batch] if total % batch else [])
        n_naive = min(args.naive_crops, segments[0].count)
        cols = segments[0].cols

        def ours() -> float:  # (b) every crop of C_l and C_{l-2}, results back on the host
            t0 = time.perf_counter()
            result, _ = scanner.scan([image], [label], segments)
            result.correct.cpu()
            return total / (time.perf_counter() - t0)

        def bare() -> float:  # (c) batches of the same sizes, inputs made beforehand
            sync(device)
            t0 = time.perf_counter()
            for size in sizes:
                with amp_ctx():
                    out = clf(x[:size])
            out.float().cpu()
            return total / (time.perf_counter() - t0)

        def naive() -> float:  # (a) one crop, one forward pass, one read-back at a time
            sync(device)
            t0 = time.perf_counter()
            for q in range(n_naive):
                crop = reference_crop(image, q // cols, q % cols, side, (out_h, out_w))
                with amp_ctx():
                    logits = clf(crop[None])
                int(logits.float().argmax()) == label  # noqa: B015 - the per-crop read-back is the point
            return n_naive / (time.perf_counter() - t0)

        # Warm-up (allocator, cuDNN autotuning), then the best of --repeat interleaved rounds.
        scanner.scan([image], [label], [Segment(0, side, min(segments[0].rows, 2), segments[0].cols)])
        with amp_ctx():
            clf(x)
        rates: dict[str, list[float]] = {"ours": [], "bare": [], "naive": []}
        for _ in range(args.repeat):
            rates["ours"].append(ours())
            rates["bare"].append(bare())
            rates["naive"].append(naive())
        rate_ours, rate_bare, rate_naive = (max(rates[k]) for k in ("ours", "bare", "naive"))
    report = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "model": args.model, "input": [c, out_h, out_w], "image": f"{w}x{h}",
        "r": args.r, "l": side, "crops": total, "batch_size": batch,
        "precision": str(amp).replace("torch.", "") if amp else "float32", "channels_last": cl,
        "naive_crops_per_s": round(rate_naive, 1), "naive_note": f"timed on {n_naive} crops, extrapolated",
        "rounds": args.repeat,
        "ours_crops_per_s": round(rate_ours, 1), "bare_forward_crops_per_s": round(rate_bare, 1),
        "ours_over_naive": round(rate_ours / rate_naive, 2), "ours_over_bare": round(rate_ours / rate_bare, 3),
    }
    print(json.dumps(report, indent=2))
    print(f"(b)/(a) ours/naive = {rate_ours / rate_naive:.2f}x   (b)/(c) ours/bare forward = "
          f"{rate_ours / rate_bare:.3f}")


if __name__ == "__main__":
    main()
