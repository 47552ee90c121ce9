"""The second route to a torch module: down-convert the graph to an older opset with
``onnx.version_converter``, where that is exact.

Direct conversion (onnx2torch with :mod:`.onnx_converters`) covers opsets up to 21. A graph it
cannot convert (an opset above 21, whose operators changed only in the element types they accept,
or an operator version without a converter) is converted again at each opset of
:data:`TARGET_OPSETS` below its own. The version converter's adapters refuse what they cannot
express (a float8 tensor at opset 18, Reduce axes computed at run time, antialiased Resize at 17);
the few adapters that would silently change what a node computes are refused here first
(:func:`downgrade_problem`).
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError
from .onnx_external import model_graphs

#: the opsets a graph is down-converted to, newest first: 21 is the newest converted directly, and
#: onnx2torch itself covers 17 completely
TARGET_OPSETS = (21, 17)
_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSumSquare")


def standard_opset(model: Any) -> int:
    """The model's opset of the standard domain."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    return 1


def _since(op: str, opset: int) -> int | None:
    from onnx import defs

    try:
        return int(defs.get_schema(op, max_inclusive_version=opset, domain="").since_version)
    except Exception:  # noqa: BLE001 - onnx raises SchemaError, a RuntimeError on some builds
        return None


def _attr(node: Any, name: str) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def downgrade_problem(node: Any, source: int, target: int) -> str | None:
    """Why down-converting ``node`` from opset ``source`` to ``target`` would change what it computes
    (an adapter that keeps the node but drops the meaning of a newer attribute), or None."""
    crosses = lambda version: target < version <= source  # noqa: E731 - a one-line predicate
    op = node.op_type
    if op == "AveragePool" and crosses(19) and any(int(d) != 1 for d in (_attr(node, "dilations") or ())):
        return "AveragePool with dilations"
    if op == "Pad" and crosses(19) and _attr(node, "mode") in (b"wrap", "wrap"):
        return "Pad mode 'wrap'"
    if op == "Resize" and crosses(19) and _attr(node, "coordinate_transformation_mode") in (
            b"half_pixel_symmetric", "half_pixel_symmetric"):
        return "Resize coordinate_transformation_mode 'half_pixel_symmetric'"
    if op in _REDUCE and crosses(18) and _attr(node, "noop_with_empty_axes"):
        return f"{op} noop_with_empty_axes=1"
    return None


def downconvert(model: Any, target: int, *, label: str) -> Any:
    """``model`` at opset ``target`` (a new ModelProto), when the version converter does it exactly.

    Raises:
        ModelLoadError: an adapter is missing or refuses, or would not be exact.
    """
    from onnx import version_converter

    source = standard_opset(model)
    for _, graph in model_graphs(model):
        for node in graph.node:
            if _since(node.op_type, source) == _since(node.op_type, target):
                continue
            problem = downgrade_problem(node, source, target)
            if problem is not None:
                raise ModelLoadError(f"{label}: {problem} cannot be converted from opset {source} to {target} "
                                     "exactly", operator=node.op_type)
    try:
        return version_converter.convert_version(model, target)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError, ValueError, IndexError
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{label}: the graph cannot be converted from opset {source} to {target}: "
                             f"{message[:300]}") from None
