"""The in-memory Python API: audit an ``nn.Module`` on tensors, from a notebook or a script.

    >>> from worker.engine.api import audit
    >>> report = audit(model, images, labels, suites={"attacks": {}}, gates=["clean.top1>=0.9"])
    >>> report["verdict"]

It returns the same report as ``robustaudit audit`` (and writes ``report.json``, ``report.html``
and the artifacts when ``out`` is given): both build :class:`~worker.engine.runner.AuditInputs` and
call :func:`~worker.engine.runner.run_audit`, so validation, suites, gates and report are the
same code. The module is the caller's own object in the caller's own process, so it is not
sandboxed and no format check applies: that is for checkpoints sent to the service.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from .card import ModelCard, ModelFormat
from .classifier import Classifier
from .datasets import DatasetRef
from .errors import DatasetError, ModelCardError, SpecError
from .gates import Baseline, baseline_gates
from .models.loading import probe
from .runner import clear_outputs, prepare_inputs, resolve_device, run_audit
from .samples import SampleSet
from .spec import AuditSpec
from .suites.base import ProgressFn

#: how the report names a sample of the API's images (their index in ``images``)
ID_PREFIX = "in_memory"


@dataclasses.dataclass(frozen=True)
class InMemoryData:
    """Stands where a dataset reference would be: the report says the images came from the caller.

    Args:
        n_samples: how many images were given.
    """

    n_samples: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": ID_PREFIX, "n_samples": self.n_samples}


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the parameters and buffers (names, dtypes, shapes, bytes): the report's model id."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(_bytes(t.reshape(-1).view(torch.uint8)))
    return digest.hexdigest()


def _bytes(t: torch.Tensor) -> bytes:
    try:
        return t.numpy().tobytes()
    except (ImportError, RuntimeError):  # a box with torch alone: slower, same bytes
        return bytes(t.tolist())


def _images(images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    x = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
    if x.ndim != 4 or x.shape[0] < 1:
        raise DatasetError(f"images must be N x C x H x W with N >= 1, got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise DatasetError(f"images must have 1 or 3 channels, got {x.shape[1]}")
    if not x.is_floating_point():
        raise DatasetError(f"images must be floats in [0, 1], got {x.dtype} (divide uint8 images by 255)")
    x = x.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DatasetError(f"images must lie in [0, 1], got values from {float(x.min()):.4g} to {float(x.max()):.4g}; "
                           "give the model's normalisation as mean and std instead of normalising the images")
    return x


def _labels(labels: torch.Tensor | Sequence[int], n: int, num_classes: int) -> torch.Tensor:
    y = torch.as_tensor(labels).flatten()
    if y.is_floating_point() or y.dtype == torch.bool or y.numel() != n:
        raise DatasetError(f"labels must be {n} integers (one per image), got {y.numel()} of {y.dtype}")
    y = y.to(torch.int64)
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise DatasetError(f"labels must lie in [0, {num_classes}), found {int(y.min())} to {int(y.max())}")
    return y


def _output_width(model: nn.Module, x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> int:
    """The model's number of classes, read from one forward pass where it is (when no class names say it)."""
    c = x.shape[1]
    z = (x[:1] - torch.tensor(mean).view(1, c, 1, 1)) / torch.tensor(std).view(1, c, 1, 1)
    first = next(iter(model.parameters()), None)
    with torch.no_grad():
        out = model(z.to(first.device if first is not None else "cpu"))
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ModelCardError(f"the model returned {type(out).__name__}"
                             f"{f' of shape {tuple(out.shape)}' if isinstance(out, torch.Tensor) else ''}, "
                             "expected N x num_classes logits")
    return int(out.shape[1])


def _channel_values(value: Sequence[float] | None, channels: int, default: float, name: str) -> tuple[float, ...]:
    if value is None:
        return (default,) * channels
    values = tuple(float(v) for v in value)
    if len(values) != channels:
        raise ModelCardError(f"{name} must have {channels} values (one per channel), got {len(values)}")
    return values


@contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """The Classifier puts the module in eval mode and freezes it; the caller gets it back as it was."""
    training = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    first = next(iter(model.parameters()), None)
    try:
        yield
    finally:
        if first is not None:
            model.to(first.device)
        for m, mode in training.items():
            m.training = mode
        for p, flag in grads.items():
            p.requires_grad_(flag)


def audit(model: nn.Module, images: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor | Sequence[int], *,
          suites: dict[str, Any] | list[str] | None = None, gates: list[str] | None = None,
          class_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
          std: Sequence[float] | None = None, out: str | Path | None = None, seed: int = 0,
          device: str = "cpu", accept_unreliable: bool = False, hierarchy: dict[str, str] | None = None,
          name: str | None = None, on_progress: ProgressFn | None = None, html: bool = True,
          baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Audit ``model`` on ``images`` and return the report (the CLI's, same schema).

    Args:
        model: a classifier returning N x num_classes logits for N x C x H x W inputs.
        images: N x C x H x W floats in [0, 1] (or a sequence of C x H x W tensors of one size);
            the model's input size is theirs.
        labels: N true class indices.
        suites: suite name -> parameters (or a list of names); ``clean`` always runs.
        gates: e.g. ``["clean.top1>=0.9", "attacks.robust_accuracy.linf.eps_0p03137>=0.5"]``
            (``robustaudit metrics`` lists every path; ``eps_0p03137`` is the budget 8/255).
        class_names: one per class; by default "0".."n-1" with n read from the model's output.
        mean, std: per-channel normalisation the model expects (applied inside, so every suite
            works in [0, 1] pixel space); by default none.
        out: folder for report.json and the artifacts; by default a temporary folder, removed
            afterwards (the report is returned, its artifact paths then name deleted files).
        seed: seeds every random choice of the suites.
        device: "cpu", "cuda", "cuda:N" or "auto".
        accept_unreliable: let gates pass on metrics a sanity flag makes unreliable.
        hierarchy: class name -> group name, for the attacks suite's group rates.
        name: the model's display name in the report (default: its class name).
        on_progress: called with (suite, fraction done).
        html: with ``out``, also write ``out/report.html`` (the page a person reads).
        baseline: an earlier report (returned by ``audit`` or read from a report.json) that gates
            written against a baseline compare with (``"clean.top1 >= baseline - 0.05"``).

    Raises:
        AuditInputError: bad suites, gates, images, labels or a model whose output does not fit.
    """
    target = resolve_device(device)
    x = _images(images)
    n, c, h, w = x.shape
    mean_t = _channel_values(mean, c, 0.0, "mean")
    std_t = _channel_values(std, c, 1.0, "std")
    if any(s <= 0 for s in std_t):
        raise ModelCardError(f"std must be positive, got {list(std_t)}")
    num_classes = len(class_names) if class_names is not None else _output_width(model, x, mean_t, std_t)
    # The same card checks as a file's card (names, hierarchy, bounds); then the format says "in memory".
    raw_card: dict[str, Any] = {"format": ModelFormat.TORCHSCRIPT.value, "num_classes": num_classes,
                                "input_size": [c, h, w], "mean": list(mean_t),
                                "std": list(std_t), "hierarchy": hierarchy or {},
                                "name": name or type(model).__name__}
    if class_names is not None:
        raw_card["class_names"] = list(class_names)
    card = dataclasses.replace(ModelCard.from_dict(raw_card), format=ModelFormat.MODULE)
    y = _labels(labels, n, num_classes)
    # The spec is validated by the same code as the CLI's; the dataset placeholder is replaced at once.
    spec = AuditSpec.from_dict({"model": f"{ID_PREFIX}:{type(model).__name__}", "dataset": "builtin:digits",
                                "suites": suites if suites is not None else {}, "gates": gates or [],
                                "seed": seed, "device": device, "accept_unreliable": accept_unreliable})
    spec = dataclasses.replace(spec, dataset=cast(DatasetRef, InMemoryData(n)))
    if baseline is not None:
        spec.baseline = Baseline.from_report(baseline, baseline_gates(spec.gates), source="the baseline report given",
                                             audit_id=(baseline.get("audit") or {}).get("id"))
    elif baseline_gates(spec.gates):
        raise SpecError(f"gate '{baseline_gates(spec.gates)[0]}' is written against a baseline: pass "
                        "baseline=REPORT (an earlier report)")
    with _restored(model):
        classifier = Classifier(model, card, sha256=weights_digest(model), device=target)
        probe(classifier)
        samples = SampleSet(images=list(x), labels=y, ids=[f"{ID_PREFIX}:{i}" for i in range(n)],
                            class_names=list(card.class_names), reference=InMemoryData(n).to_dict())
        inputs = prepare_inputs(spec, classifier, samples)
        if out is not None:
            clear_outputs(out)
            report = run_audit(spec, out, inputs=inputs, on_progress=on_progress)
            if html:
                from .html import write_report_html

                write_report_html(report, out)
            return report
        with tempfile.TemporaryDirectory(prefix="robustaudit-") as tmp:
            return run_audit(spec, tmp, inputs=inputs, on_progress=on_progress)
