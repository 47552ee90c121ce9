"""Loading checkpoints as :class:`~worker.engine.classifier.Classifier` objects.

Formats (picked by the model card, never by the file name): TorchScript, torch.export
programs, ONNX graphs (converted to torch), and weights as safetensors or a weights-only
``torch.save`` state dict for an architecture built by torchvision, timm or transformers.
Nothing in a checkpoint can run Python code here. See docs/models.md.

The names below are imported lazily, so that the torch-free checks (:mod:`.archive`) can be
imported by the API process without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real names for type checkers; at run time they are imported on first use
    from .loading import load_classifier, sha256_file
    from .safetensors_file import load_safetensors
    from .torchvision_archs import SUPPORTED_ARCHS

_LAZY = {
    "SUPPORTED_ARCHS": ".torchvision_archs",
    "load_classifier": ".loading",
    "load_safetensors": ".safetensors_file",
    "sha256_file": ".loading",
}

__all__ = ["SUPPORTED_ARCHS", "load_classifier", "load_safetensors", "sha256_file"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
