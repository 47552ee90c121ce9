"""The sampled images an audit runs on.

Images keep their native resolution (the fragile suite crops the original); suites that
need the model's input size call :meth:`SampleSet.prepared`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F

from .card import ModelCard


@dataclass(frozen=True)
class Population:
    """The audit's whole sample as every shard of it sees it: what a shard needs to choose alike
    whichever shard it is (the classes present, the first sample id), without the images.

    Args:
        ids: every sample id of the audit, in sample order.
        labels: their labels (model class indices once aligned with the card).
    """

    ids: tuple[str, ...]
    labels: tuple[int, ...]

    @cached_property
    def classes(self) -> tuple[int, ...]:
        """The labels present, sorted."""
        return tuple(sorted(set(self.labels)))


@dataclass
class SampleSet:
    """A seeded, stratified sample of a dataset.

    Args:
        images: one float tensor per sample, C x H x W in [0, 1], native resolution.
        labels: int64 tensor of N true labels (indices into ``class_names``).
        ids: stable sample ids, e.g. ``"digits:1203"``; used to key per-sample results.
        class_names: the dataset's class names, index = label.
        reference: the dataset reference the sample was drawn from (for the report).
        whole: the audit's whole sample when this set is a shard of it (set by :meth:`subset`);
            None: this set is the whole sample.
    """

    images: list[torch.Tensor]
    labels: torch.Tensor
    ids: list[str]
    class_names: list[str]
    reference: dict = field(default_factory=dict)
    whole: Population | None = None

    def __post_init__(self) -> None:
        if not (len(self.images) == len(self.ids) == int(self.labels.numel())):
            raise ValueError("images, labels and ids must have the same length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def population(self) -> Population:
        """The audit's whole sample: this set's own ids and labels unless it is a shard."""
        if self.whole is not None:
            return self.whole
        return Population(tuple(self.ids), tuple(int(v) for v in self.labels.tolist()))

    def subset(self, indices: Sequence[int]) -> SampleSet:
        """The samples at ``indices``, in that order (a shard of an audit)."""
        idx = list(indices)
        return SampleSet(images=[self.images[i] for i in idx],
                         labels=self.labels[torch.as_tensor(idx, dtype=torch.long)] if idx
                         else self.labels[:0],
                         ids=[self.ids[i] for i in idx], class_names=list(self.class_names),
                         reference=dict(self.reference), whole=self.population)

    def shards(self, count: int) -> list[SampleSet]:
        """Split into ``count`` contiguous shards of near-equal size (none empty)."""
        count = max(1, min(count, len(self)))
        bounds = [round(i * len(self) / count) for i in range(count + 1)]
        return [self.subset(range(bounds[i], bounds[i + 1])) for i in range(count)]

    def prepared(self, card: ModelCard) -> torch.Tensor:
        """All images at the model's input size as one N x C x H x W tensor in [0, 1]."""
        if not self.images:
            c, h, w = card.input_size
            return torch.zeros(0, c, h, w)
        return torch.stack([prepare_image(img, card) for img in self.images])


def match_channels(img: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by replication, RGB -> grey by ITU-R 601 luma; same count: unchanged."""
    have = img.shape[-3]
    if have == channels:
        return img
    if have == 1 and channels == 3:
        return img.expand(*img.shape[:-3], 3, *img.shape[-2:]).contiguous()
    if have == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype, device=img.device).view(3, 1, 1)
        return (img * w).sum(dim=-3, keepdim=True)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def prepare_image(img: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """Resize the shorter side, centre-crop, and match the card's channel count."""
    c, h, w = card.input_size
    img = match_channels(img, c)
    ih, iw = img.shape[-2:]
    if (ih, iw) == (h, w) and card.preprocess.resize is None:
        return img
    resize = card.preprocess.resize or max(h, w)
    if card.preprocess.resize is None and (ih, iw) != (h, w):
        # No recipe: scale so the crop of the input size just fits.
        scale = max(h / ih, w / iw)
    else:
        scale = resize / min(ih, iw)
    nh, nw = max(h, round(ih * scale)), max(w, round(iw * scale))
    if (nh, nw) != (ih, iw):
        img = F.interpolate(img.unsqueeze(0), size=(nh, nw), mode="bilinear",
                            align_corners=False, antialias=True).squeeze(0)
    crop_h = min(card.preprocess.crop or h, nh)
    crop_w = min(card.preprocess.crop or w, nw)
    top, left = (nh - crop_h) // 2, (nw - crop_w) // 2
    img = img[..., top:top + crop_h, left:left + crop_w]
    if (crop_h, crop_w) != (h, w):
        img = F.interpolate(img.unsqueeze(0), size=(h, w), mode="bilinear",
                            align_corners=False, antialias=True).squeeze(0)
    return img.clamp(0.0, 1.0)
