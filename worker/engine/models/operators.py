"""The operator allow-list for TorchScript and torch.export graphs.

A TorchScript archive or an exported program is a program: it may call any registered operator.
After loading, and before any forward pass, every node of every graph is checked here:

- allowed: operators of the ``aten`` and ``prim`` namespaces (tensor maths and TorchScript's
  control flow, attribute access and containers), minus :data:`DENIED`;
- refused: every other namespace (custom operators a file may name, quantized or distributed
  kernels, the profiler), and any operator with a string argument that names a file.

A refusal is a :class:`ModelLoadError` (a 422 upstream) that names the operator.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError

ALLOWED_NAMESPACES = frozenset({"aten", "prim"})

# aten::warn is allowed: scripted torchvision models (ViT) call it, and in the sandbox it only
# writes to the sandboxed process's own stderr, of which the parent keeps a bounded tail.

#: Operators of the allowed namespaces that reach outside the tensors they are given.
DENIED: dict[str, str] = {
    "aten::from_file": "maps a file into a tensor; with shared=True writes to it go back to the file",
    "aten::save": "writes a file",
    "aten::load": "reads a file (not registered in torch 2.15; refused should a build add it)",
    "prim::Print": "writes to the worker's output and logs (log forgery, unbounded output)",
    "prim::fork": "starts a task on another thread that may outlive the forward pass and its time limit",
    "aten::wait": "joins a forked task (fork is refused; a wait without it has no use)",
    "prim::awaitable": "defers a call past the point where the forward returns",
    "prim::awaitable_nowait": "defers a call past the point where the forward returns",
    "prim::awaitable_wait": "runs a deferred call",
    "prim::rpc_async": "remote procedure call: network access",
    "prim::rpc_sync": "remote procedure call: network access",
    "prim::rpc_remote": "remote procedure call: network access",
    "prim::PythonOp": "calls a Python function (what TorchScript cannot compile)",
    "prim::CallFunction": "calls a function value the inliner could not resolve, so its graph cannot be checked",
    # Calls of known methods are inlined before the check; what is left goes through an interface,
    # whose implementation (a module or a TorchScript class) is only known at run time.
    "prim::CallMethod": "calls a method through an interface, whose code cannot be checked before it runs",
    "aten::manual_seed": "reseeds the global generator the audit's seeded sampling and attacks depend on",
    "aten::seed": "reseeds the global generator the audit's seeded sampling and attacks depend on",
    "aten::set_num_threads": "changes the worker's thread pool for every later audit",
    "aten::set_num_interop_threads": "changes the worker's thread pool for every later audit",
}

#: Python callables an exported graph may call besides operators: pure arithmetic on sizes.
ALLOWED_PYTHON_TARGETS: frozenset[Any] = frozenset({
    operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
    operator.mod, operator.pow, operator.neg, operator.pos, operator.abs, operator.eq, operator.ne,
    operator.lt, operator.le, operator.gt, operator.ge, operator.and_, operator.or_, operator.xor,
    operator.not_, operator.invert, operator.lshift, operator.rshift,
    torch.sym_int, torch.sym_float, torch.sym_max, torch.sym_min, torch.sym_not, torch.sym_ite,
})

# Argument names that carry a file name when their type is a string.
_FILE_ARG = re.compile(r"(^|_)(file|filename|fname|path|dirname)$", re.IGNORECASE)


@functools.lru_cache(maxsize=1)
def file_operators() -> frozenset[str]:
    """Every registered operator with a string argument named like a file: they open files."""
    found = set()
    for schema in torch._C._jit_get_all_schemas():
        if any(_FILE_ARG.search(a.name) and "str" in str(a.type).lower() for a in schema.arguments):
            found.add(schema.name)
    return frozenset(found)


def refusal(name: str) -> str | None:
    """Why operator ``name`` (``namespace::op``) may not run, or None when it may."""
    namespace, sep, _ = name.partition("::")
    if not sep or namespace not in ALLOWED_NAMESPACES:
        return f"operator {name!r} is outside the allowed namespaces {sorted(ALLOWED_NAMESPACES)}"
    if name in DENIED:
        return f"operator {name!r} is not allowed: it {DENIED[name]}"
    if name in file_operators():
        return f"operator {name!r} is not allowed: it takes a file name"
    return None


def _refuse(label: str, where: str, op: str, reason: str) -> ModelLoadError:
    return ModelLoadError(f"{label}: {reason} (in {where}); only pure tensor operations are accepted",
                          operator=op)


# -- TorchScript -------------------------------------------------------------------------------------

def check_torchscript(module: Any, *, label: str) -> None:
    """Refuse a loaded TorchScript module whose methods call anything off the allow-list.

    Walks every method (``forward``, hooks, helpers) of every submodule, each with the free
    functions and methods it calls inlined, through the nested blocks of ``If``/``Loop`` nodes.

    Raises:
        ModelLoadError: naming the first refused operator and the method that calls it.
    """
    for prefix, sub in _script_modules(module):
        c_module = sub._c
        for method_name in c_module._method_names():
            method = c_module._get_method(method_name)
            where = f"{prefix or type(sub).__name__}.{method_name}" if prefix else method_name
            for kind in _graph_kinds(_inlined(method, label, where).nodes()):
                reason = refusal(kind)
                if reason is not None:
                    raise _refuse(label, where, kind, reason)


def _script_modules(module: Any) -> Iterator[tuple[str, Any]]:
    """(qualified name, module) for the module and every scripted submodule."""
    if not hasattr(module, "_c"):
        raise ModelLoadError(f"not a TorchScript module: {type(module).__name__}")
    yield "", module
    for name, sub in module.named_modules():
        if name and hasattr(sub, "_c"):
            yield name, sub


def _inlined(method: Any, label: str, where: str) -> Any:
    """The method's graph with every call it can resolve inlined (what a forward actually runs)."""
    try:
        return method.inlined_graph
    except RuntimeError:
        raise ModelLoadError(f"{label}: TorchScript method {where} cannot be inlined, so its operators cannot "
                             "be checked; refused") from None


def _graph_kinds(nodes: Iterable[Any]) -> Iterator[str]:
    """Node kinds of a graph and of every block nested in it, without recursion limits."""
    stack = [iter(nodes)]
    while stack:
        node = next(stack[-1], None)
        if node is None:
            stack.pop()
            continue
        yield node.kind()
        for block in node.blocks():
            stack.append(iter(block.nodes()))


# -- torch.export -------------------------------------------------------------------------------------

def target_name(target: Any) -> str | None:
    """``namespace::op`` of an operator overload or packet, else None."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target._schema.name)
    if isinstance(target, torch._ops.OpOverloadPacket):
        return str(target._qualified_op_name)
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order::{target.name()}"
    return None


def check_graph_module(graph_module: nn.Module, *, label: str) -> None:
    """Refuse an exported program's graph (and the graphs of its submodules) with nodes off the list.

    ``call_function`` targets must be allowed operators or :data:`ALLOWED_PYTHON_TARGETS`;
    ``call_module``/``call_method`` nodes (never in a plain export) are refused.
    """
    for prefix, sub in graph_module.named_modules():
        graph = getattr(sub, "graph", None)
        if graph is None:
            continue
        where = f"graph {prefix}" if prefix else "the graph"
        for node in graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            if node.op != "call_function":
                raise _refuse(label, where, node.op, f"node {node.name!r} is a {node.op!r} node")
            if _is_allowed_python(node.target):
                continue
            name = target_name(node.target)
            if name is None:
                shown = _callable_name(node.target)
                raise _refuse(label, where, shown, f"callable {shown!r} is not an operator")
            reason = refusal(name)
            if reason is not None:
                raise _refuse(label, where, name, reason)


def check_converted_graph(graph_module: nn.Module, *, label: str, module_prefixes: tuple[str, ...]) -> None:
    """Refuse a converted graph (ONNX -> torch.fx) that calls anything but allowed modules and operators.

    A converter (onnx2torch) builds a graph of ``call_module`` nodes, one per ONNX operator. Each
    called module must be an instance of a class defined under ``module_prefixes`` (library code:
    torch.nn layers, the converter's operator modules), never a class from elsewhere;
    ``call_function`` nodes follow :func:`check_graph_module`'s rules; ``call_method`` is refused.
    """
    graph = getattr(graph_module, "graph", None)
    if graph is None:
        raise ModelLoadError(f"{label}: the converted model has no graph to check")
    for node in graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op == "call_module":
            cls = type(graph_module.get_submodule(str(node.target)))
            where = f"{cls.__module__}.{cls.__qualname__}"
            if not cls.__module__.startswith(module_prefixes):
                raise _refuse(label, "the converted graph", where,
                              f"module {node.target!r} is a {where}, not a torch or converter operator module")
            continue
        if node.op != "call_function":
            raise _refuse(label, "the converted graph", node.op, f"node {node.name!r} is a {node.op!r} node")
        if _is_allowed_python(node.target):
            continue
        name = target_name(node.target)
        reason = refusal(name) if name is not None else f"callable {_callable_name(node.target)!r} is not an operator"
        if reason is not None:
            raise _refuse(label, "the converted graph", name or _callable_name(node.target), reason)


def _is_allowed_python(target: Any) -> bool:
    try:
        return target in ALLOWED_PYTHON_TARGETS
    except TypeError:  # unhashable
        return False


def _callable_name(target: Any) -> str:
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or type(target).__name__
    return f"{module}.{name}" if module else str(name)
