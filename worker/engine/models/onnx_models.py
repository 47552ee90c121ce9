"""``format: "onnx"``: an ONNX graph converted into a differentiable torch module (onnx2torch).

An ONNX file is a protobuf graph of standard operators, not code, so every suite (attacks
included: the converted module has gradients) runs on it. Before it is trusted:

- the graph is bounded (:data:`MAX_ONNX_BYTES`, protobuf's own 2 GiB limit) and parsed without
  its external data;
- only the standard operator domain is accepted (``""`` / ``ai.onnx``): custom domains and
  model-local functions are refused, and the graphs (with their subgraphs and ``training_info``'s)
  have at most :data:`MAX_ONNX_NODES` nodes;
- external data (weights in a file beside the graph) is read only from the upload's own folder:
  a zip holding the model and its data files (:mod:`.onnx_bundle`), or, for a bare ``.onnx`` file,
  the folder it lies in; every tensor slot's reference is checked first (:mod:`.onnx_external`);
- the converted ``torch.fx`` graph is checked by :func:`~.operators.check_converted_graph`:
  only torch.nn, onnx2torch's and our converter modules, and allowed operators.

Conversion takes two routes: onnx2torch with the converters of :mod:`.onnx_converters` (opsets up
to 21), then, for a graph that route cannot convert, the graph down-converted to an older opset
where that is exact (:mod:`.onnx_versions`). An operator neither converts is a clear refusal.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..card import ModelCard
from ..errors import ModelCardError, ModelLoadError
from . import onnx_converters
from .onnx_bundle import check_bundle
from .onnx_external import FolderFiles, ZipFiles, external_refs, load_external_data, model_graphs
from .onnx_versions import TARGET_OPSETS, downconvert, standard_opset
from .operators import check_converted_graph

MAX_ONNX_BYTES = 2**31 - 1
MAX_ONNX_NODES = 100_000
ALLOWED_DOMAINS = frozenset({"", "ai.onnx"})
#: the modules a converted graph may call: torch's layers, onnx2torch's and our operator modules
CONVERTED_MODULES = ("torch.nn.modules.", "onnx2torch.node_converters.", onnx_converters.MODULE_PREFIX)


def _onnx() -> tuple[Any, Any]:
    try:
        import onnx
        from onnx2torch import convert
    except ImportError:
        raise ModelLoadError("model card 'format' is 'onnx', and onnx/onnx2torch are not installed here: "
                             "pip install 'robustaudit[onnx]'") from None
    return onnx, convert


def _parse(raw: bytes, label: str) -> Any:
    onnx, _ = _onnx()
    try:
        return onnx.load_model_from_string(raw)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends have no common base
        raise ModelLoadError(f"{label} is not a readable ONNX file: {str(exc)[:200]}") from None


def _bounded(size: int, label: str) -> None:
    if size > MAX_ONNX_BYTES:
        raise ModelLoadError(f"{label} is {size} bytes, above the {MAX_ONNX_BYTES}-byte limit of an ONNX file")


def read_onnx(path: Path) -> Any:
    """The ModelProto of a bare ``.onnx`` file, without its external data, after the size bound."""
    _bounded(path.stat().st_size, path.name)
    return _parse(path.read_bytes(), path.name)


def read_onnx_with_data(path: Path) -> Any:
    """The checked ModelProto of ``path`` with its external data read in (nothing is left to open).

    ``path`` is a bare ``.onnx`` file, whose data files lie beside it, or a zip holding one ``.onnx``
    file and its data files. The graph is checked (:func:`check_onnx_model`) before any data is read.
    """
    label = path.name
    if not zipfile.is_zipfile(path):
        model = read_onnx(path)
        check_onnx_model(model, label=label)
        load_external_data(model, FolderFiles(path.parent, label=label), label=label)
        return model
    bundle = check_bundle(path, name=label)
    with zipfile.ZipFile(path) as archive:
        _bounded(archive.getinfo(bundle.model).file_size, f"{label} ({bundle.model})")
        model = _parse(archive.read(bundle.model), f"{label} ({bundle.model})")
        check_onnx_model(model, label=label)
        load_external_data(model, ZipFiles(archive, bundle, label=label), label=label)
    return model


def _graphs(model: Any) -> Iterator[Any]:
    """Every graph of the model (``training_info``'s included) and every subgraph, without recursion."""
    stack = [graph for _, graph in model_graphs(model)]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def check_onnx_model(model: Any, *, label: str) -> None:
    """Refuse custom domains, local functions and oversized graphs; check every external reference.

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
    for graph in _graphs(model):
        nodes += len(graph.node)
        if nodes > MAX_ONNX_NODES:
            raise ModelLoadError(f"{label}: the ONNX graph has more than {MAX_ONNX_NODES} nodes")
        for node in graph.node:
            if node.domain not in ALLOWED_DOMAINS:
                raise ModelLoadError(f"{label}: ONNX node {node.name or node.op_type!r} is "
                                     f"{node.domain}::{node.op_type}, a custom domain; only standard operators "
                                     "are accepted", operator=f"{node.domain}::{node.op_type}")
    external_refs(model, label=label)


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


def convert_onnx(model: Any, *, label: str) -> tuple[torch.nn.Module, str]:
    """(the checked torch module in eval mode, the route that converted it) of a checked ModelProto with its data.

    The direct route first; then, when an operator version has no converter, the graph down-converted
    to each opset of :data:`~.onnx_versions.TARGET_OPSETS` below its own.
    """
    _, convert = _onnx()
    onnx_converters.register()
    source = standard_opset(model)
    try:
        module, route = _convert(convert, model, label), "direct"
    except NotImplementedError as exc:
        first = exc
        for target in (t for t in TARGET_OPSETS if t < source):
            try:
                older = downconvert(model, target, label=label)
                module, route = _convert(convert, older, label), f"opset {source} -> {target}"
                break
            except (NotImplementedError, ModelLoadError):
                continue
        else:
            raise ModelLoadError(f"{label}: {str(first)[:300]}; this ONNX operator (or opset version) has no "
                                 f"exact torch conversion, directly or down-converted to opset "
                                 f"{' or '.join(str(t) for t in TARGET_OPSETS if t < source) or '-'}") from None
    check_converted_graph(module, label=label, module_prefixes=CONVERTED_MODULES)
    return module.eval(), route  # onnx2torch returns it in training mode (batch statistics, dropout)


def _convert(convert: Any, model: Any, label: str) -> torch.nn.Module:
    try:
        # The ModelProto, not the path: onnx2torch would write a shape-inferred copy beside the file.
        module: torch.nn.Module = convert(model)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnx's shape inference raises its own types
        raise ModelLoadError(f"{label} cannot be converted to torch: {str(exc)[:300]}") from None
    return module


def load_onnx_module(path: Path, card: ModelCard) -> tuple[torch.nn.Module, int | None]:
    """The checked, converted module and its fixed batch size (None: any batch)."""
    model = read_onnx_with_data(path)
    _check_input(model, card, path.name)
    del model.training_info[:]  # training graphs are not run; their references were checked
    module, _ = convert_onnx(model, label=path.name)
    return module.float().eval(), fixed_batch(model)
