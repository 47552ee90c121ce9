"""Converters for the ONNX operator versions of opsets 18-21 that onnx2torch 1.5.15 lacks.

onnx2torch looks a node's converter up by (operator, the version of the operator's schema at the
model's opset). Opsets 18-21 changed operators classifiers use in two ways:

- **inputs instead of attributes, or new attributes**: the Reduce operators take ``axes`` as an
  input (18), Pad takes ``axes`` (18) and a ``wrap`` mode (19), Split takes ``num_outputs`` (18),
  Resize takes ``antialias``/``axes``/``keep_aspect_ratio_policy`` (18) and a
  ``half_pixel_symmetric`` mode (19), Reshape's ``allowzero`` (14) which the dynamo exporter sets,
  and the new Gelu (20). Each has its own module here, exact for every attribute value it accepts;
  a value it cannot reproduce exactly (antialiased resizing, say) is a ``NotImplementedError`` that
  names it, which the loader reports as a refusal.
- **new element types only** (float8, int4, bfloat16 on more operators): the previous version's
  converter is exact for the float and integer types a classifier uses, so it is registered again
  under the new version (:data:`SAME_AS`). A tensor of a type it cannot handle still fails there.

:func:`register` runs once, on the first ONNX load. The modules live in this file, so the converted
graph's check allows modules of :data:`MODULE_PREFIX` besides torch's and onnx2torch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MODULE_PREFIX = __name__  # the modules below are defined in this file itself

#: operator -> {new version: the version whose converter is exact for it}: type-only changes
SAME_AS: dict[str, dict[int, int]] = {
    "Cast": {19: 13, 21: 13}, "Constant": {19: 13, 21: 13}, "ConstantOfShape": {20: 9, 21: 9},
    "Equal": {19: 13}, "Identity": {19: 16, 21: 16}, "Flatten": {21: 13}, "Shape": {19: 15, 21: 15},
    "Transpose": {21: 13}, "Unsqueeze": {21: 13}, "IsInf": {20: 10}, "IsNaN": {20: 13},
    "GreaterOrEqual": {16: 12}, "LessOrEqual": {16: 12},
    "ScatterND": {18: 16},  # 18 added reductions max and min, which onnx2torch's converter refuses
}
#: the Reduce operators whose axes became an input at version 18 (ReduceMax/Min: bool too at 20)
REDUCE_VERSIONS: dict[str, tuple[int, ...]] = {
    "ReduceMean": (18,), "ReduceMax": (18, 20), "ReduceMin": (18, 20), "ReduceSumSquare": (18,),
    "ReduceProd": (18,), "ReduceL1": (18,), "ReduceL2": (18,), "ReduceLogSum": (18,), "ReduceLogSumExp": (18,),
}
#: versions converted here: (operator, version) -> the converter. Reshape 5/13/14 replace onnx2torch's,
#: which refuses ``allowzero=1``; Resize 11/13 replace onnx2torch's, which converts the settings torch
#: cannot reproduce with a warning only.
_OURS: dict[tuple[str, int], Callable[[Any, Any], Any]] = {}


def _converter(op: str, *versions: int) -> Callable[[Callable[[Any, Any], Any]], Callable[[Any, Any], Any]]:
    def deco(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        for version in versions:
            _OURS[(op, version)] = fn
        return fn
    return deco


def _result(module: nn.Module, node: Any, inputs: Sequence[str] | None = None) -> Any:
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    return OperationConverterResult(torch_module=module, onnx_mapping=OnnxMapping(
        inputs=tuple(node.input_values if inputs is None else inputs), outputs=node.output_values))


def _const(node: Any, graph: Any, index: int) -> list[int] | None:
    """The constant integer input ``index`` (an initializer or a Constant node), or None when absent
    or computed at run time."""
    from onnx2torch.utils.common import get_const_value

    names = node.input_values
    if index >= len(names) or not names[index]:
        return None
    try:
        value = get_const_value(names[index], graph)
    except KeyError:
        return None
    return [int(v) for v in (value.reshape(-1).tolist() if isinstance(value, torch.Tensor) else list(value))]


def _present(node: Any, index: int) -> bool:
    return index < len(node.input_values) and bool(node.input_values[index])


# -- Reshape ---------------------------------------------------------------------------------------

class Reshape(nn.Module):
    """ONNX Reshape: ``0`` copies the input's dimension unless ``allowzero`` (then it is a 0-size one)."""

    def __init__(self, allowzero: bool) -> None:
        super().__init__()
        self.allowzero = allowzero

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        sizes = [int(s) for s in shape.tolist()]
        if not self.allowzero:
            sizes = [x.shape[i] if s == 0 else s for i, s in enumerate(sizes)]
        return torch.reshape(x, sizes)


@_converter("Reshape", 5, 13, 14, 19, 21)
def _reshape(node: Any, graph: Any) -> Any:
    return _result(Reshape(bool(node.attributes.get("allowzero", 0))), node)


# -- Reduce with axes as an input -----------------------------------------------------------------

def _reduce_fn(op: str) -> Callable[[torch.Tensor, list[int], bool], torch.Tensor]:
    def prod(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
        for d in sorted(dims, reverse=True):  # from the last, so earlier indices stay valid
            x = torch.prod(x, dim=d, keepdim=keep)
        return x

    table: dict[str, Callable[[torch.Tensor, list[int], bool], torch.Tensor]] = {
        "ReduceMean": lambda x, d, k: torch.mean(x, dim=d, keepdim=k),
        "ReduceMax": lambda x, d, k: torch.amax(x, dim=d, keepdim=k),
        "ReduceMin": lambda x, d, k: torch.amin(x, dim=d, keepdim=k),
        "ReduceSumSquare": lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k),
        "ReduceProd": prod,
        "ReduceL1": lambda x, d, k: torch.sum(torch.abs(x), dim=d, keepdim=k),
        "ReduceL2": lambda x, d, k: torch.sqrt(torch.sum(x * x, dim=d, keepdim=k)),
        "ReduceLogSum": lambda x, d, k: torch.log(torch.sum(x, dim=d, keepdim=k)),
        "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
    }
    return table[op]


class Reduce(nn.Module):
    """A Reduce operator of opset 18+: axes from a constant (``axes``) or a run-time input.

    No axes (absent or empty) reduces every axis, or passes the input through when
    ``noop_with_empty_axes`` is set.
    """

    def __init__(self, op: str, axes: list[int] | None, keepdims: bool, noop_with_empty_axes: bool) -> None:
        super().__init__()
        self.op, self.axes, self.keepdims, self.noop = op, axes, keepdims, noop_with_empty_axes
        self.fn = _reduce_fn(op)

    def forward(self, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        dims = self.axes if axes is None else [int(a) for a in axes.reshape(-1).tolist()]
        if not dims:
            if self.noop:
                return x
            dims = list(range(x.dim()))
        dims = sorted({d % x.dim() for d in dims}) if x.dim() else []
        return self.fn(x, dims, self.keepdims)


def _reduce(node: Any, graph: Any) -> Any:
    keepdims = bool(node.attributes.get("keepdims", 1))
    noop = bool(node.attributes.get("noop_with_empty_axes", 0))
    if _present(node, 1):
        axes = _const(node, graph, 1)
        if axes is None:  # computed at run time: the module takes it as its second input
            return _result(Reduce(node.operation_type, None, keepdims, noop), node)
    else:
        axes = []
    return _result(Reduce(node.operation_type, axes, keepdims, noop), node, node.input_values[:1])


for _op, _versions in REDUCE_VERSIONS.items():
    _converter(_op, *_versions)(_reduce)


# -- Pad ---------------------------------------------------------------------------------------------

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


class Pad(nn.Module):
    """ONNX Pad (18+): ``pads`` (begins, then ends) over ``axes`` (default all), a constant value,
    and the modes constant, reflect, edge and wrap (torch's constant, reflect, replicate and circular;
    the last three pad at most the last three axes, as torch does)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in _PAD_MODES:
            raise NotImplementedError(f"Pad mode {mode!r} is not converted")
        self.mode = _PAD_MODES[mode]

    def forward(self, x: torch.Tensor, pads: torch.Tensor, value: torch.Tensor | None = None,
                axes: torch.Tensor | None = None) -> torch.Tensor:
        rank = x.dim()
        dims = list(range(rank)) if axes is None else [int(a) % rank for a in axes.reshape(-1).tolist()]
        flat = [int(p) for p in pads.reshape(-1).tolist()]
        if len(flat) != 2 * len(dims):
            raise ValueError(f"Pad: {len(flat)} pads for {len(dims)} axes")
        begin, end = [0] * rank, [0] * rank
        for i, d in enumerate(dims):
            begin[d], end[d] = flat[i], flat[len(dims) + i]
        torch_pads: list[int] = []
        for d in reversed(range(rank)):  # torch: the last axis first
            torch_pads += [begin[d], end[d]]
        while torch_pads and torch_pads[-2:] == [0, 0]:
            torch_pads = torch_pads[:-2]
        if self.mode == "constant":
            fill = 0.0 if value is None or value.numel() == 0 else float(value.reshape(-1)[0])
            return F.pad(x, torch_pads, mode="constant", value=fill)
        if len(torch_pads) > 6 or len(torch_pads) // 2 > rank - 2:
            raise NotImplementedError(f"Pad mode {self.mode!r} pads only the last axes of a batch of images")
        return F.pad(x, torch_pads, mode=self.mode)


@_converter("Pad", 18, 19, 21)
def _pad(node: Any, graph: Any) -> Any:
    return _result(Pad(str(node.attributes.get("mode", "constant"))), node)


# -- Split -------------------------------------------------------------------------------------------

class Split(nn.Module):
    """ONNX Split (18): sizes from the ``split`` input, else ``num_outputs`` parts of ceil(n / parts)
    (the last one smaller)."""

    def __init__(self, axis: int, parts: int) -> None:
        super().__init__()
        self.axis, self.parts = axis, parts

    def forward(self, x: torch.Tensor, split: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if split is not None and split.numel():
            sizes: int | list[int] = [int(s) for s in split.reshape(-1).tolist()]
        else:
            sizes = math.ceil(x.shape[self.axis] / self.parts)
        out = torch.split(x, sizes, dim=self.axis)
        if len(out) != self.parts:
            raise ValueError(f"Split gives {len(out)} parts, the node has {self.parts} outputs")
        return tuple(out)


@_converter("Split", 18)
def _split(node: Any, graph: Any) -> Any:
    return _result(Split(int(node.attributes.get("axis", 0)), len(node.output_values)), node)


# -- Resize ------------------------------------------------------------------------------------------

class Resize(nn.Module):
    """ONNX Resize (18/19) for the settings ``F.interpolate`` reproduces exactly: the spatial axes of
    a batch (scales or sizes), nearest with (asymmetric, floor) or (half_pixel, round_prefer_ceil),
    linear and cubic (a = -0.75) with half_pixel, pytorch_half_pixel or align_corners, no antialias."""

    def __init__(self, mode: str, align_corners: bool | None) -> None:
        super().__init__()
        self.mode, self.align_corners = mode, align_corners

    def forward(self, x: torch.Tensor, roi: torch.Tensor | None = None, scales: torch.Tensor | None = None,
                sizes: torch.Tensor | None = None) -> torch.Tensor:
        if sizes is not None and sizes.numel():
            size = [int(s) for s in sizes.tolist()]
            if size[:2] != list(x.shape[:2]):
                raise NotImplementedError("Resize of the batch or channel axis is not converted")
            return F.interpolate(x, size=size[2:], mode=self.mode, align_corners=self.align_corners)
        if scales is None or not scales.numel():
            raise ValueError("Resize has neither scales nor sizes")
        factors = [float(s) for s in scales.tolist()]
        if factors[:2] != [1.0, 1.0]:
            raise NotImplementedError("Resize of the batch or channel axis is not converted")
        # ONNX maps coordinates with the given scale, as torch does when the factor is not recomputed
        return F.interpolate(x, scale_factor=factors[2:], mode=self.mode, align_corners=self.align_corners,
                             recompute_scale_factor=False)


_LINEAR = {3: "linear", 4: "bilinear", 5: "trilinear"}


@_converter("Resize", 11, 13, 18, 19)
def _resize(node: Any, graph: Any) -> Any:
    a = node.attributes
    mode, transform = str(a.get("mode", "nearest")), str(a.get("coordinate_transformation_mode", "half_pixel"))
    refused = [f"{k}={a[k]!r}" for k, ok in (("antialias", 0), ("keep_aspect_ratio_policy", "stretch"),
                                              ("exclude_outside", 0), ("cubic_coeff_a", -0.75))
               if k in a and a[k] != ok]
    if "axes" in a:
        refused.append("axes")
    if refused:
        raise NotImplementedError(f"Resize with {', '.join(refused)} is not converted exactly")
    if mode == "nearest":
        nearest = str(a.get("nearest_mode", "round_prefer_floor"))
        torch_mode = {("asymmetric", "floor"): "nearest",
                      ("half_pixel", "round_prefer_ceil"): "nearest-exact"}.get((transform, nearest))
        if torch_mode is None:
            raise NotImplementedError(f"Resize nearest with coordinate_transformation_mode={transform!r}, "
                                      f"nearest_mode={nearest!r} is not converted exactly")
        module = Resize(torch_mode, None)
    elif mode in ("linear", "cubic"):
        if transform not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            raise NotImplementedError(f"Resize {mode} with coordinate_transformation_mode={transform!r} "
                                      "is not converted exactly")
        rank = _input_rank(node, graph)
        torch_mode = "bicubic" if mode == "cubic" else _LINEAR.get(rank or 0, "")
        if not torch_mode or (mode == "cubic" and rank != 4):
            raise NotImplementedError(f"Resize {mode} of a rank-{rank} tensor is not converted")
        module = Resize(torch_mode, transform == "align_corners")
    else:
        raise NotImplementedError(f"Resize mode {mode!r} is not converted")
    return _result(module, node)


def _input_rank(node: Any, graph: Any) -> int | None:
    info = graph.value_info.get(node.input_values[0])
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    return len(info.type.tensor_type.shape.dim)


# -- Gelu --------------------------------------------------------------------------------------------

class Gelu(nn.Module):
    """ONNX Gelu (20): exact (erf) or its tanh approximation."""

    def __init__(self, approximate: str) -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise NotImplementedError(f"Gelu approximate={approximate!r} is not converted")
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)


@_converter("Gelu", 20)
def _gelu(node: Any, graph: Any) -> Any:
    return _result(Gelu(str(node.attributes.get("approximate", "none"))), node)


# -- registration ------------------------------------------------------------------------------------

def _average_pool_19(previous: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """AveragePool 19 added ``dilations``; without them (all 1) it is version 11."""

    def convert(node: Any, graph: Any) -> Any:
        if any(int(d) != 1 for d in node.attributes.get("dilations", ())):
            raise NotImplementedError("AveragePool with dilations is not converted")
        return previous(node, graph)
    return convert


@cache
def register() -> None:
    """Add this module's converters to onnx2torch's registry (once per process)."""
    from onnx2torch.node_converters.registry import (
        _CONVERTER_REGISTRY,  # the public add_converter refuses to replace Reshape's
        OperationDescription,
        get_converter,
    )

    def put(op: str, version: int, fn: Callable[[Any, Any], Any]) -> None:
        _CONVERTER_REGISTRY[OperationDescription(domain="", operation_type=op, version=version)] = fn

    for (op, version), fn in _OURS.items():
        put(op, version, fn)
    for op, versions in SAME_AS.items():
        for new, old in versions.items():
            put(op, new, get_converter(op, old))
    put("AveragePool", 19, _average_pool_19(get_converter("AveragePool", 11)))


def converted_versions() -> dict[str, list[int]]:
    """Operator -> the versions this module adds or replaces (for the docs' coverage table)."""
    out: dict[str, set[int]] = {}
    for op, version in _OURS:
        out.setdefault(op, set()).add(version)
    for op, versions in SAME_AS.items():
        out.setdefault(op, set()).update(versions)
    out.setdefault("AveragePool", set()).add(19)
    return {op: sorted(v) for op, v in sorted(out.items())}
