"""``format: "onnx"``: an ONNX graph converted into a differentiable torch module (onnx2torch).

An ONNX file is a protobuf graph of standard operators, not code, so every suite (attacks
included: the converted module has gradients) runs on it. Before it is trusted:

- the file is bounded (:data:`MAX_ONNX_BYTES`, protobuf's own 2 GiB limit) and parsed without
  reading external data; a tensor stored in another file (``data_location: EXTERNAL``) is
  refused, since its path would name a file of the server;
- only the standard operator domain is accepted (``""`` / ``ai.onnx``): custom domains and
  model-local functions are refused, and the graph (with its subgraphs) has at most
  :data:`MAX_ONNX_NODES` nodes;
- the converted ``torch.fx`` graph is checked by :func:`~.operators.check_converted_graph`:
  only torch.nn and onnx2torch's converter modules and allowed operators.

onnx2torch covers the common opsets (up to about 18); an operator it does not convert is a
clear refusal, not a fallback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..card import ModelCard
from ..errors import ModelCardError, ModelLoadError
from .operators import check_converted_graph

MAX_ONNX_BYTES = 2**31 - 1
MAX_ONNX_NODES = 100_000
ALLOWED_DOMAINS = frozenset({"", "ai.onnx"})
#: the modules a converted graph may call: torch's layers and onnx2torch's operator modules
CONVERTED_MODULES = ("torch.nn.modules.", "onnx2torch.node_converters.")


def _onnx() -> tuple[Any, Any]:
    try:
        import onnx
        from onnx2torch import convert
    except ImportError:
        raise ModelLoadError("model card 'format' is 'onnx', and onnx/onnx2torch are not installed here: "
                             "pip install 'robustaudit[onnx]'") from None
    return onnx, convert


def read_onnx(path: Path) -> Any:
    """The ModelProto of ``path``, without its external data, after the size bound."""
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise ModelLoadError(f"{path.name} is {size} bytes, above the {MAX_ONNX_BYTES}-byte limit of an ONNX file")
    onnx, _ = _onnx()
    try:
        return onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends have no common base
        raise ModelLoadError(f"{path.name} is not a readable ONNX file: {str(exc)[:200]}") from None


def _graphs(graph: Any) -> Iterator[Any]:
    """The graph and every subgraph of an If/Loop/Scan attribute, without recursion."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto a graph stores: initializers, sparse ones, and constant attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices


def check_onnx_model(model: Any, *, label: str) -> None:
    """Refuse custom domains, local functions, external data and oversized graphs.

    Raises:
        ModelLoadError: naming what was refused.
    """
    for opset in model.opset_import:
        if opset.domain not in ALLOWED_DOMAINS:
            raise ModelLoadError(f"{label}: ONNX operator domain {opset.domain!r} is not allowed; only the standard "
                                 "domain ('' / 'ai.onnx') is accepted", operator=opset.domain)
    if len(model.functions):
        first = f"{model.functions[0].domain}::{model.functions[0].name}"
        raise ModelLoadError(f"{label}: the ONNX model defines {len(model.functions)} local functions ({first}); "
                             "only standard operators are accepted", operator=first)
    nodes = 0
    external = 1  # onnx.TensorProto.EXTERNAL, without importing onnx here
    for graph in _graphs(model.graph):
        nodes += len(graph.node)
        if nodes > MAX_ONNX_NODES:
            raise ModelLoadError(f"{label}: the ONNX graph has more than {MAX_ONNX_NODES} nodes")
        for node in graph.node:
            if node.domain not in ALLOWED_DOMAINS:
                raise ModelLoadError(f"{label}: ONNX node {node.name or node.op_type!r} is "
                                     f"{node.domain}::{node.op_type}, a custom domain; only standard operators "
                                     "are accepted", operator=f"{node.domain}::{node.op_type}")
        for tensor in _tensors(graph):
            if tensor.data_location == external or len(tensor.external_data):
                raise ModelLoadError(f"{label}: ONNX tensor {tensor.name!r} is stored in an external file; "
                                     "refused (save the model with its weights inside: onnx.save(model, path, "
                                     "save_as_external_data=False))", member=tensor.name)


def _check_input(model: Any, card: ModelCard, label: str) -> None:
    """One image input of rank 4 whose static sides agree with the card."""
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise ModelLoadError(f"{label}: the ONNX graph takes {len(inputs)} inputs, expected one batch of images")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ModelCardError(f"{label}: the ONNX graph's input has rank {len(dims)}, expected N x C x H x W")
    for dim, want, name in zip(list(dims)[1:], card.input_size, "CHW"):
        if dim.HasField("dim_value") and dim.dim_value != want:
            raise ModelCardError(f"{label}: the ONNX graph takes {name}={dim.dim_value} but the model card "
                                 f"'input_size' is {list(card.input_size)}")


def fixed_batch(model: Any) -> int | None:
    """The batch size of a graph exported without a dynamic batch dimension, else None."""
    weights = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name not in weights:
            dims = inp.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return int(dims[0].dim_value)
    return None


def load_onnx_module(path: Path, card: ModelCard) -> tuple[torch.nn.Module, int | None]:
    """The checked, converted module and its fixed batch size (None: any batch)."""
    model = read_onnx(path)
    check_onnx_model(model, label=path.name)
    _check_input(model, card, path.name)
    _, convert = _onnx()
    try:
        # The ModelProto, not the path: onnx2torch would write a shape-inferred copy beside the file.
        module = convert(model)
    except NotImplementedError as exc:
        raise ModelLoadError(f"{path.name}: {str(exc)[:300]}; this ONNX operator (or opset version) has no torch "
                             "conversion in onnx2torch: export with another opset") from None
    except Exception as exc:  # noqa: BLE001 - onnx's shape inference raises its own types
        raise ModelLoadError(f"{path.name} cannot be converted to torch: {str(exc)[:300]}") from None
    check_converted_graph(module, label=path.name, module_prefixes=CONVERTED_MODULES)
    return module.float().eval(), fixed_batch(model)
