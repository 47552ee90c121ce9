"""ONNX files as today's exporters write them, exported here once per test process, and their
hostile variants.

``exported(arch, variant)``: a small CNN, torchvision's resnet18 and timm's ViT-tiny (random weights,
small inputs), written by ``torch.onnx.export`` with torch's defaults (the dynamo exporter, weights in
``<name>.onnx.data`` beside the graph), either with no opset given (``"default"``) or with
``opset_version`` 17, 18, 20 or 21. Each is exported at most once per process (the exporter is the
costly part) into a temporary folder removed at exit; a test copies what it changes.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

NUM_CLASSES = 10
VARIANTS = ("default", "17", "18", "20", "21")
ARCHS = ("cnn", "resnet18", "vit_tiny")
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
_EXPORTS: dict[tuple[str, str], Path] = {}
_ROOT: list[Path] = []


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16, NUM_CLASSES)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv1(x)))
        z = torch.relu(self.conv2(y)) + y
        return self.fc(torch.cat([z.mean(dim=(2, 3)), nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)], 1))


SIDES = {"cnn": 16, "resnet18": 32, "vit_tiny": 32}


def build(arch: str) -> nn.Module:
    """The network, randomly initialised (seeded), in eval mode, for inputs of ``SIDES[arch]`` pixels."""
    torch.manual_seed(0)
    if arch == "cnn":
        return SmallCNN()
    if arch == "resnet18":
        import torchvision

        return torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES).eval()
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=NUM_CLASSES,
                             img_size=SIDES[arch]).eval()


def card(arch: str) -> dict[str, Any]:
    return {"format": "onnx", "num_classes": NUM_CLASSES, "input_size": [3, SIDES[arch], SIDES[arch]],
            "mean": MEAN, "std": STD}


def _root() -> Path:
    if not _ROOT:
        root = Path(tempfile.mkdtemp(prefix="robustaudit-onnx-"))
        atexit.register(shutil.rmtree, root, True)
        _ROOT.append(root)
    return _ROOT[0]


def exported(arch: str, variant: str = "default") -> Path:
    """``<arch>-<variant>/model.onnx`` (and ``model.onnx.data`` beside it), exported once per process."""
    key = (arch, variant)
    if key not in _EXPORTS:
        folder = _root() / f"{arch}-{variant}"
        folder.mkdir()
        path = folder / "model.onnx"
        kwargs = {} if variant == "default" else {"opset_version": int(variant)}
        side = SIDES[arch]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(build(arch), (torch.rand(2, 3, side, side),), str(path), verbose=False,
                              **kwargs)
        _EXPORTS[key] = path
    return _EXPORTS[key]


def copy_export(arch: str, variant: str, dst: Path) -> Path:
    """A copy of the export's folder at ``dst``; the copied model's path."""
    shutil.copytree(exported(arch, variant).parent, dst)
    return dst / "model.onnx"


def zip_export(arch: str, variant: str, dst: Path, folder: str = "") -> Path:
    """The export's model and data files in a zip (deflated), optionally inside one folder."""
    src = exported(arch, variant).parent
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in sorted(src.iterdir()):
            z.write(f, folder + f.name)
    return dst


def images(n: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def onnxruntime_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    """What onnxruntime computes for pixel images ``x`` (normalised here as the card says), batch by batch
    of the export's static batch size."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else len(x)
    z = ((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)).numpy()
    return np.concatenate([session.run(None, {inp.name: z[i:i + batch]})[0] for i in range(0, len(z), batch)])


def assert_matches_onnxruntime(got: np.ndarray, want: np.ndarray) -> float:
    """Equal top-1, and logits within 1e-4 of the largest reference logit's magnitude; the relative error."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert (got.argmax(1) == want.argmax(1)).all(), (got.argmax(1), want.argmax(1))
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    assert rel <= 1e-4, rel
    return rel
