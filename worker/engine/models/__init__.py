"""Loading checkpoints as :class:`~worker.engine.classifier.Classifier` objects.

Formats (picked by the model card, never by the file name): TorchScript, torch.export
programs, and weights for a torchvision architecture as safetensors or a weights-only
``torch.save`` state dict. Nothing in a checkpoint can run Python code here.
"""

from .loading import load_classifier, sha256_file
from .safetensors_reader import load_safetensors
from .torchvision_archs import SUPPORTED_ARCHS

__all__ = ["SUPPORTED_ARCHS", "load_classifier", "load_safetensors", "sha256_file"]
