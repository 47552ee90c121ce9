"""Classify every crop of a list of segments in full batches, on the model's device.

A segment is all crops of one side of one image (C_l or C_{l-2}). Segments are laid end to
end and cut into batches regardless of their boundaries, so C_l and C_{l-2} (and the next
image) share batches and every forward pass is full. Nothing goes back to the host until
the caller collects the result.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ...batching import BatchSize
from ...classifier import Classifier
from ...errors import ModelOutputError
from .crops import CropResizer
from .params import Precision


@dataclass(frozen=True)
class Segment:
    """Every ``side`` x ``side`` crop of image ``image``, in row-major order of the top-left corner."""

    image: int
    side: int
    rows: int
    cols: int

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @classmethod
    def of(cls, image: int, side: int, height: int, width: int) -> Segment:
        return cls(image=image, side=side, rows=height - side + 1, cols=width - side + 1)


@dataclass
class ScanResult:
    """Per-crop results, concatenated over the segments (on the model's device)."""

    correct: torch.Tensor  # bool
    confidence: torch.Tensor  # float32, softmax probability of the true class
    pred: torch.Tensor  # int64, top-1 class

    def segment(self, offset: int, seg: Segment) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(correct, confidence, pred) of one segment as rows x cols maps."""
        sl = slice(offset, offset + seg.count)
        shape = (seg.rows, seg.cols)
        return (self.correct[sl].view(shape), self.confidence[sl].view(shape), self.pred[sl].view(shape))


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain float32."""
    if precision is Precision.AUTO:
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {Precision.FLOAT32: None, Precision.BFLOAT16: torch.bfloat16, Precision.FLOAT16: torch.float16}[precision]


@contextlib.contextmanager
def channels_last_model(classifier: Classifier, enabled: bool) -> Iterator[bool]:
    """Run the model in channels_last for the duration, where it accepts the conversion; yields
    whether it did. The model is put back in the contiguous format afterwards."""
    applied = False
    if enabled:
        try:
            classifier.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            applied = True
        except (RuntimeError, TypeError, AttributeError):
            applied = False
    try:
        yield applied
    finally:
        if applied:
            classifier.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


class CropClassifier:
    """Crop, resize and classify; judge each crop against its image's label.

    Args:
        classifier: the wrapped model (normalises inside).
        resizer: the batched crop-and-resize.
        top_k: a crop is correct when fewer than ``top_k`` classes have a strictly higher logit
            than the true class (ties count as correct).
        autocast: autocast dtype for the forward pass, or None for float32.
        channels_last: feed channels_last batches (use with :func:`channels_last_model`).
        batch: the batch size to use (shared with the classifier unless overridden).
    """

    def __init__(self, classifier: Classifier, resizer: CropResizer, *, top_k: int,
                 autocast: torch.dtype | None = None, channels_last: bool = False,
                 batch: BatchSize | None = None) -> None:
        self.classifier = classifier
        self.resizer = resizer
        self.top_k = top_k
        self.autocast = autocast
        self.channels_last = channels_last
        self.batch = batch or classifier.batch

    def batch_crops(self, images: Sequence[torch.Tensor], segments: Sequence[Segment], offsets: Sequence[int],
                    start: int, stop: int) -> torch.Tensor:
        """Crops ``start:stop`` of the concatenated segments, as one model input batch."""
        parts = []
        first = bisect.bisect_right(offsets, start) - 1
        for s in range(first, len(segments)):
            seg, off = segments[s], offsets[s]
            if off >= stop:
                break
            a, b = max(start, off) - off, min(stop, off + seg.count) - off
            if b > a:
                parts.append(self.resizer.crops(images[seg.image], seg.side, a, b))
        x = parts[0] if len(parts) == 1 else torch.cat(parts)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of a batch, under the configured autocast."""
        device = self.classifier.device
        ctx = (torch.autocast(device_type=device.type, dtype=self.autocast) if self.autocast is not None
               else contextlib.nullcontext())
        with ctx:
            out = self.classifier(x)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x.shape[0], self.classifier.num_classes):
            self.classifier.check_output(out, x.shape[0])
        return out.float()

    @torch.no_grad()
    def scan(self, images: Sequence[torch.Tensor], labels: Sequence[int], segments: Sequence[Segment],
             on_batch: Callable[[int], None] | None = None) -> tuple[ScanResult, list[int]]:
        """Classify every crop of ``segments``; returns the results and each segment's offset.

        ``images`` are C x H x W tensors on the model's device with the model's channel count;
        ``labels[i]`` is the true class of ``images[i]``. ``on_batch(done)`` is called after
        each batch is queued (it may raise to cancel).
        """
        device = self.classifier.device
        offsets, total = [], 0
        for seg in segments:
            offsets.append(total)
            total += seg.count
        seg_labels = torch.tensor([labels[s.image] for s in segments], dtype=torch.long)
        crop_labels = torch.repeat_interleave(seg_labels, torch.tensor([s.count for s in segments],
                                                                        dtype=torch.long)).to(device)
        correct = torch.empty(total, dtype=torch.bool, device=device)
        confidence = torch.empty(total, dtype=torch.float32, device=device)
        pred = torch.empty(total, dtype=torch.long, device=device)
        finite = torch.ones((), dtype=torch.bool, device=device)

        def run(start: int, stop: int) -> None:
            logits = self.forward(self.batch_crops(images, segments, offsets, start, stop))
            y = crop_labels[start:stop]
            true_logit = logits.gather(1, y[:, None])
            higher = (logits > true_logit).sum(dim=1)
            correct[start:stop] = higher < self.top_k
            confidence[start:stop] = torch.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0].exp()
            pred[start:stop] = logits.argmax(dim=1)
            finite.logical_and_(torch.isfinite(logits).all())
            if on_batch is not None:
                on_batch(stop)

        if total:
            self.batch.map(run, total)
        if not bool(finite):
            raise ModelOutputError("the model output contains NaN or infinite values on some crops")
        return ScanResult(correct=correct, confidence=confidence, pred=pred), offsets
