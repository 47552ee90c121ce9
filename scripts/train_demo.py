"""Train the demo assets in worker/engine/assets/demo/ (a dev tool; the outputs are committed).

Run from the repository root (CPU, about two minutes on two cores)::

    .venv/bin/python scripts/train_demo.py                 # writes worker/engine/assets/demo/
    .venv/bin/python scripts/train_demo.py --grid /tmp/g.png   # also pick where the sample grid goes

What it writes:

- ``digits_cnn.pt`` (TorchScript) + ``digits_cnn.card.json``: a small CNN, standard training.
- ``digits_cnn_export.pt2`` (torch.export program, dynamic batch) + ``digits_cnn_export.card.json``:
  the same network.
- ``digits_cnn_pgd.pt`` (TorchScript) + ``digits_cnn_pgd.card.json``: the same architecture,
  PGD adversarially trained from scratch (L-inf, eps 0.1, step 0.025, 7 steps, random start,
  in [0, 1] pixel space).
- ``digits_generator.safetensors`` + ``digits_generator.card.json``: weights of
  :class:`worker.engine.generators.digits.DigitsGenerator`, trained as the decoder of a
  conditional VAE on the train split.
- ``metrics.json``: clean test accuracy, PGD-20 (eps 0.1) robust accuracy, generator fidelity
  (share of G(z, y), z ~ N(0, I), that ``digits_cnn`` classifies as y), seeds and settings.

The classifiers take NORMALISED input, (x - 0.5) / 0.5 with x in [0, 1]: the engine's wrapper
normalises with the card's mean/std. Data: ``worker/engine/data/digits.pt`` (8x8, values 0..16)
served as 1x32x32 in [0, 1] (x / 16, bilinear, align_corners=False, no antialias), split 80/20
per class by :func:`digits_split`. Every stage is seeded and runs with deterministic algorithms
on two threads, so a re-run reproduces ``metrics.json`` (timings are logged, not stored).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from worker.engine.card import ModelCard
from worker.engine.generators import GENERATOR_ARCHS
from worker.engine.generators.digits import LAYERS, DigitsGenerator

log = logging.getLogger("train_demo")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "worker" / "engine" / "data" / "digits.pt"
OUT = ROOT / "worker" / "engine" / "assets" / "demo"

SPLIT_SEED = 0
SEEDS = {"digits_cnn": 1, "digits_cnn_pgd": 2, "digits_generator": 3, "eval_pgd": 4, "eval_fidelity": 5}
MEAN, STD = 0.5, 0.5
NUM_CLASSES = 10
CLASS_NAMES = [str(i) for i in range(NUM_CLASSES)]
HIERARCHY = {"0": "round", "6": "round", "8": "round", "9": "round",
             "1": "straight", "4": "straight", "7": "straight",
             "2": "curved", "3": "curved", "5": "curved"}

CNN_SETTINGS: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "epochs": 15}
PGD_TRAIN: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "epochs": 30, "norm": "linf",
             "eps": 0.1, "step": 0.025, "steps": 7, "random_start": True, "init": "scratch"}
PGD_EVAL: dict[str, Any] = {"norm": "linf", "eps": 0.1, "step": 0.01, "steps": 20, "random_start": True, "loss": "ce"}
GEN_SETTINGS: dict[str, Any] = {"method": "conditional_vae", "optimizer": "adam", "lr": 2e-3, "batch_size": 64,
                "epochs": 40, "recon_loss": "bce_sum", "kl_weight": 1.0, "latent_dim": 32}
FIDELITY_SAMPLES_PER_CLASS = 100


# -- data -------------------------------------------------------------------------------------
def load_digits(path: Path = DATA) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 32, 32) float in [0, 1] and labels (N,) int64, as served to models."""
    raw = torch.load(path, weights_only=True)
    x = raw["images"].to(torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=False)
    return x.clamp(0.0, 1.0), raw["labels"].to(torch.int64)


def digits_split(labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified 80/20 split: (train indices, test indices), each sorted ascending.

    For each class c, its indices in ascending order are permuted with
    ``torch.randperm(n_c, generator=torch.Generator().manual_seed(seed + c))``; the first
    ``round(0.2 * n_c)`` go to the test split, the rest to the train split.
    """
    train, test = [], []
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c, as_tuple=True)[0]  # ascending
        n_c = idx.numel()
        perm = torch.randperm(n_c, generator=torch.Generator().manual_seed(seed + c))
        n_test = round(0.2 * n_c)
        test.append(idx[perm[:n_test]])
        train.append(idx[perm[n_test:]])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values


# -- classifier -------------------------------------------------------------------------------
class DigitsCNN(nn.Module):
    """Conv 1->16->32->64 (3x3, ReLU, 2x2 max-pool each), then 1024 -> 64 -> 10; ~90k parameters.

    Takes normalised 1x32x32 input and returns logits.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.ReLU(),
                                  nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Normalized(nn.Module):
    """[0, 1] pixels in, logits out: what the engine's wrapper does around the saved network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - MEAN) / STD)


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float, steps: int,
             generator: torch.Generator) -> torch.Tensor:
    """Untargeted L-inf PGD with a uniform random start, cross-entropy loss, in [0, 1] space."""
    was_training = model.training
    model.eval()
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    model.train(was_training)
    return x_adv.detach()


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=generator).split(batch_size))


def train_classifier(x: torch.Tensor, y: torch.Tensor, *, seed: int, settings: dict[str, Any],
                     adversarial: bool = False) -> DigitsCNN:
    """Standard or PGD adversarial training of a fresh :class:`DigitsCNN` (seeded)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = DigitsCNN()
    model = Normalized(net)
    opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    for epoch in range(settings["epochs"]):
        model.train()
        total, n = 0.0, 0
        for idx in _batches(len(x), settings["batch_size"], gen):
            xb, yb = x[idx], y[idx]
            if adversarial:
                xb = pgd_linf(model, xb, yb, eps=settings["eps"], step=settings["step"],
                              steps=settings["steps"], generator=gen)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            n += len(idx)
        if epoch % 5 == 4 or epoch == settings["epochs"] - 1:
            log.info("  epoch %d loss %.4f", epoch + 1, total / n)
    return net.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int) -> float:
    """Accuracy on PGD-20 adversarial examples (re-checked on the clipped, projected images)."""
    x_adv = pgd_linf(model, x, y, eps=PGD_EVAL["eps"], step=PGD_EVAL["step"], steps=PGD_EVAL["steps"],
                     generator=torch.Generator().manual_seed(seed))
    if (x_adv - x).abs().max() > PGD_EVAL["eps"] + 1e-6 or x_adv.min() < 0 or x_adv.max() > 1:
        raise RuntimeError("PGD left the eps-ball or [0, 1]")
    return accuracy(model, x_adv, y)


# -- generator ----------------------------------------------------------------------------------
class DigitsEncoder(nn.Module):
    """q(z | x, y) of the conditional VAE; only used for training, not saved."""

    def __init__(self, latent_dim: int = 32, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),   # 16x16
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),  # 8x8
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),  # 4x4
            nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(64 * 16 + num_classes, 128), nn.ReLU(), nn.Linear(128, 2 * latent_dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.cat([self.conv(x), F.one_hot(y, self.num_classes).to(x.dtype)], dim=1)
        mu, logvar = self.fc(h).chunk(2, dim=1)
        return mu, logvar


def train_generator(x: torch.Tensor, y: torch.Tensor, *, seed: int) -> DigitsGenerator:
    """Train :class:`DigitsGenerator` as the decoder of a conditional VAE (seeded)."""
    s = GEN_SETTINGS
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    decoder = DigitsGenerator(latent_dim=s["latent_dim"], num_classes=NUM_CLASSES)
    encoder = DigitsEncoder(latent_dim=s["latent_dim"])
    opt = torch.optim.Adam([*decoder.parameters(), *encoder.parameters()], lr=s["lr"])
    for epoch in range(s["epochs"]):
        rec_sum, kl_sum, n = 0.0, 0.0, 0
        for idx in _batches(len(x), s["batch_size"], gen):
            xb, yb = x[idx], y[idx]
            mu, logvar = encoder(xb, yb)
            z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
            out = decoder(z, yb)
            rec = F.binary_cross_entropy(out, xb, reduction="sum") / len(idx)
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(idx)
            loss = rec + s["kl_weight"] * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec_sum += rec.item() * len(idx)
            kl_sum += kl.item() * len(idx)
            n += len(idx)
        if epoch % 10 == 9 or epoch == s["epochs"] - 1:
            log.info("  epoch %d recon %.2f kl %.2f", epoch + 1, rec_sum / n, kl_sum / n)
    return decoder.eval()


@torch.no_grad()
def generator_fidelity(generator: DigitsGenerator, classifier: nn.Module, *, seed: int,
                       per_class: int) -> tuple[float, dict[str, float], torch.Tensor]:
    """Share of G(z, y), z ~ N(0, I), classified as y: overall, per class, and the images."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    z = torch.randn(len(y), generator.latent_dim, generator=gen)
    images = generator(z, y)
    hit = classifier(images).argmax(1) == y
    per = {CLASS_NAMES[c]: round(hit[y == c].float().mean().item(), 4) for c in range(NUM_CLASSES)}
    return hit.float().mean().item(), per, images


def save_grid(images: torch.Tensor, per_class: int, path: Path, cols: int = 10, scale: int = 2) -> None:
    """One row per class, the first ``cols`` samples of each, as a grey PNG."""
    from PIL import Image

    tiles = F.pad(images.view(NUM_CLASSES, per_class, 32, 32)[:, :cols], (1, 1, 1, 1), value=0.5)
    grid = tiles.permute(0, 2, 1, 3).reshape(NUM_CLASSES * 34, cols * 34)
    grid = F.interpolate(grid[None, None], scale_factor=scale, mode="nearest")[0, 0]
    Image.fromarray((grid * 255).round().to(torch.uint8).numpy(), mode="L").save(path)


# -- writing ------------------------------------------------------------------------------------
def classifier_card(name: str, fmt: str) -> dict[str, Any]:
    return {"name": name, "format": fmt, "num_classes": NUM_CLASSES, "input_size": [1, 32, 32],
            "mean": [MEAN], "std": [STD], "class_names": CLASS_NAMES, "hierarchy": HIERARCHY}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_torchscript(net: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch >= 2.15
        torch.jit.save(torch.jit.script(net.eval()), str(path))


def save_export(net: nn.Module, path: Path) -> None:
    example = torch.zeros(4, 1, 32, 32)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(net.eval(), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--grid", type=Path, default=Path("/tmp/digits_generator_grid.png"),
                        help="PNG of generator samples, one row per class (not an asset)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    args.out.mkdir(parents=True, exist_ok=True)

    x, y = load_digits()
    train_idx, test_idx = digits_split(y, seed=SPLIT_SEED)
    x_tr, y_tr, x_te, y_te = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    log.info("split: %d train, %d test", len(train_idx), len(test_idx))

    timings: dict[str, float] = {}
    models: dict[str, Any] = {}
    nets: dict[str, DigitsCNN] = {}
    for name, settings, adversarial in (("digits_cnn", CNN_SETTINGS, False),
                                        ("digits_cnn_pgd", PGD_TRAIN, True)):
        log.info("training %s", name)
        t0 = time.perf_counter()
        net = train_classifier(x_tr, y_tr, seed=SEEDS[name], settings=settings, adversarial=adversarial)
        timings[name] = time.perf_counter() - t0
        model = Normalized(net).eval()
        clean = accuracy(model, x_te, y_te)
        robust = robust_accuracy(model, x_te, y_te, seed=SEEDS["eval_pgd"])
        log.info("%s: clean %.4f, PGD-20 eps 0.1 robust %.4f (%.1f s)", name, clean, robust, timings[name])
        nets[name] = net
        models[name] = {"params": sum(p.numel() for p in net.parameters()),
                        "clean_test_accuracy": round(clean, 4),
                        "pgd20_linf_eps0.1_robust_accuracy": round(robust, 4),
                        "train_settings": settings}

    log.info("training digits_generator")
    t0 = time.perf_counter()
    generator = train_generator(x_tr, y_tr, seed=SEEDS["digits_generator"])
    timings["digits_generator"] = time.perf_counter() - t0
    fidelity, per_class, images = generator_fidelity(
        generator, Normalized(nets["digits_cnn"]).eval(), seed=SEEDS["eval_fidelity"],
        per_class=FIDELITY_SAMPLES_PER_CLASS)
    log.info("generator fidelity %.4f (%.1f s); per class %s", fidelity, timings["digits_generator"], per_class)
    fidelity_pgd, _, _ = generator_fidelity(
        generator, Normalized(nets["digits_cnn_pgd"]).eval(), seed=SEEDS["eval_fidelity"],
        per_class=FIDELITY_SAMPLES_PER_CLASS)
    log.info("generator fidelity judged by digits_cnn_pgd: %.4f", fidelity_pgd)
    save_grid(images, FIDELITY_SAMPLES_PER_CLASS, args.grid)
    log.info("sample grid: %s", args.grid)

    # assets
    save_torchscript(nets["digits_cnn"], args.out / "digits_cnn.pt")
    write_json(args.out / "digits_cnn.card.json", classifier_card("digits_cnn", "torchscript"))
    save_torchscript(nets["digits_cnn_pgd"], args.out / "digits_cnn_pgd.pt")
    write_json(args.out / "digits_cnn_pgd.card.json", classifier_card("digits_cnn_pgd", "torchscript"))
    save_export(nets["digits_cnn"], args.out / "digits_cnn_export.pt2")
    write_json(args.out / "digits_cnn_export.card.json", classifier_card("digits_cnn_export", "export"))
    state = {k: v.detach().contiguous() for k, v in generator.state_dict().items()}
    save_file(state, str(args.out / "digits_generator.safetensors"), metadata={"arch": "digits_cgen"})
    assert GENERATOR_ARCHS["digits_cgen"] is DigitsGenerator
    write_json(args.out / "digits_generator.card.json", {
        "name": "digits_generator", "arch": "digits_cgen", "format": "safetensors",
        "latent_dim": generator.latent_dim, "num_classes": NUM_CLASSES, "conditional": True,
        "output_size": [1, 32, 32], "layers": list(LAYERS), "class_names": CLASS_NAMES})
    for card in ("digits_cnn", "digits_cnn_pgd", "digits_cnn_export"):
        ModelCard.from_file(args.out / f"{card}.card.json")  # raises on a bad card

    write_json(args.out / "metrics.json", {
        "data": {"file": "worker/engine/data/digits.pt", "input_size": [1, 32, 32],
                 "split": "stratified 80/20, digits_split(labels, seed=0)", "split_seed": SPLIT_SEED,
                 "train": len(train_idx), "test": len(test_idx)},
        "seeds": SEEDS,
        "torch": {"num_threads": 2, "deterministic_algorithms": True, "version": torch.__version__},
        "normalisation": {"mean": [MEAN], "std": [STD]},
        "robust_eval": PGD_EVAL,
        "models": models,
        "generator": {"name": "digits_generator", "arch": "digits_cgen", "train_settings": GEN_SETTINGS,
                      "params": sum(p.numel() for p in generator.parameters()),
                      "fidelity_classifier": "digits_cnn",
                      "fidelity_samples_per_class": FIDELITY_SAMPLES_PER_CLASS,
                      "fidelity": round(fidelity, 4), "fidelity_per_class": per_class,
                      "fidelity_by_digits_cnn_pgd": round(fidelity_pgd, 4)},
    })
    log.info("timings (s): %s", {k: round(v, 1) for k, v in timings.items()})
    for p in sorted(args.out.iterdir()):
        log.info("  %-36s %8d bytes", p.name, p.stat().st_size)


if __name__ == "__main__":
    main()
