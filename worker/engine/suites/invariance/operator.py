"""The first linear operator W on a model's input, read from the autograd graph of one forward pass.

Reading the graph rather than the module tree works for every format alike (TorchScript and
``torch.export`` programs have no hookable layers): the normalised input ``z`` is a leaf, and
the walk follows its one consumer through operations that keep the element order and add no
information (views, copies, a constant offset, a non-zero scalar factor, constant zero padding)
up to a convolution or a matrix product whose weight does not depend on the input. Anything
else before it (a pooling, a permutation, an element-wise scale, the input used twice) means
the model's first operation is not a linear layer we can analyse: the caller skips with the reason.

The bias and the constant offsets only shift the features: collisions live in the null space of
the linear part, which is what :class:`FirstOperator` applies.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F

from ...classifier import Classifier

#: order-keeping operations that may stand between the input and W (reshapes read elements in
#: logical row-major order whatever the memory layout, so the flattened order is unchanged)
PASS_THROUGH = frozenset({"ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "CloneBackward0",
                          "ToCopyBackward0", "AliasBackward0"})
#: a constant offset (the other operand does not depend on the input): no effect on the linear part
OFFSETS = frozenset({"AddBackward0", "SubBackward0", "AddBackward1", "SubBackward1", "RsubBackward1"})
#: a scalar factor: the null space of W(c z) is the null space of W z for any c != 0
SCALES = frozenset({"MulBackward0", "MulBackward1", "DivBackward0", "DivBackward1", "NegBackward0"})


class OperatorKind(StrEnum):
    CONV2D = "conv2d"
    LINEAR = "linear"


class NotLinear(Exception):
    """The model's first operation on its input is not one W we can analyse; the message says why."""


@dataclass(frozen=True)
class FirstOperator:
    """W as it acts on one normalised image, in float64.

    Args:
        kind: a 2-D convolution or a matrix product (a Linear layer on the flattened input).
        weight: float64, conv ``(C_out, C_in / groups, kh, kw)``, linear ``(out, D)``.
        in_shape: the shape W reads per image (the input reshaped, element order kept), before
            ``pad``: conv ``(C, H, W)``, linear ``(D,)``.
        pad: constant zero padding before the convolution (``F.pad`` order), empty when none.
        stride, padding, dilation, groups: the convolution's settings.
        passed: the autograd operations walked through before W, in order.
    """

    kind: OperatorKind
    weight: torch.Tensor
    in_shape: tuple[int, ...]
    pad: tuple[int, ...] = ()
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    passed: tuple[str, ...] = ()

    @property
    def in_numel(self) -> int:
        return math.prod(self.in_shape)

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[-2]), int(self.weight.shape[-1])

    @property
    def non_overlapping(self) -> bool:
        """Patches that neither overlap nor touch padding: W is one matrix applied to each patch."""
        return (self.kind is OperatorKind.CONV2D and self.stride == self.kernel and self.dilation == (1, 1)
                and self.padding == (0, 0) and not any(self.pad))

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """W v for a batch ``(B, *in_shape)`` (float64); the output flattened per image."""
        if self.kind is OperatorKind.LINEAR:
            return v.reshape(v.shape[0], -1) @ self.weight.T
        if any(self.pad):
            v = F.pad(v, list(self.pad))
        out = F.conv2d(v, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return out.reshape(v.shape[0], -1)

    def gram(self, v: torch.Tensor) -> torch.Tensor:
        """Wᵀ W v for a batch ``(B, *in_shape)``, the adjoint through autograd."""
        with torch.enable_grad():
            leaf = v.detach().requires_grad_(True)
            out = self.apply(leaf)
            (g,) = torch.autograd.grad(out, leaf, grad_outputs=out.detach())
        return g

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind.value, "weight_shape": list(self.weight.shape),
                             "in_shape": list(self.in_shape), "passed": list(self.passed)}
        if self.kind is OperatorKind.CONV2D:
            d.update(kernel=list(self.kernel), stride=list(self.stride), padding=list(self.padding),
                     dilation=list(self.dilation), groups=self.groups, pad=list(self.pad),
                     non_overlapping=self.non_overlapping)
        return d


def _graph_consumers(root: Any) -> dict[Any, list[tuple[Any, int]]]:
    """For every autograd node reachable from ``root``: the nodes that take its output, with the slot."""
    users: dict[Any, list[tuple[Any, int]]] = defaultdict(list)
    seen = {root}
    stack = [root]
    while stack:
        node = stack.pop()
        for slot, (nxt, _) in enumerate(node.next_functions):
            if nxt is None:
                continue
            users[nxt].append((node, slot))
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return users


def _constant_slots(node: Any, slot: int) -> bool:
    """Every input of ``node`` but ``slot`` is a constant (no gradient flows there), and an ``alpha``
    that multiplies the input (``a + alpha * z``) is not zero."""
    alpha = getattr(node, "_saved_alpha", 1)
    return alpha != 0 and all(nxt is None for i, (nxt, _) in enumerate(node.next_functions) if i != slot)


def _scalar_factor(node: Any, slot: int) -> bool:
    """A multiplication or division of the input by a non-zero scalar constant."""
    name = node.name()
    if name == "NegBackward0":
        return True
    if name.startswith("Div") and slot != 0:
        return False  # c / z is not linear
    other = getattr(node, "_saved_other", None) if slot == 0 else getattr(node, "_saved_self", None)
    if other is None:
        other = getattr(node, "_saved_other", None)
    if isinstance(other, torch.Tensor):
        return other.numel() == 1 and float(other) != 0.0 and math.isfinite(float(other))
    return isinstance(other, (int, float)) and other != 0 and math.isfinite(other)


def find_first_operator(clf: Classifier, image: torch.Tensor) -> FirstOperator:
    """W of ``clf``'s model, found by one forward pass on ``image`` (C x H x W in [0, 1]).

    Raises :class:`NotLinear` with the reason when the first operation on the input is not a
    convolution or matrix product reached through order-keeping operations only.
    """
    batch = clf.fixed_batch or 1
    z = ((image[None].to(clf.device, clf.dtype) - clf.mean.to(clf.dtype)) / clf.std.to(clf.dtype))
    leaf = z.expand(batch, *z.shape[1:]).contiguous().detach().requires_grad_(True)
    with torch.enable_grad(), torch.jit.optimized_execution(False):
        out = clf.model(leaf)
    if not isinstance(out, torch.Tensor) or out.grad_fn is None:
        raise NotLinear("the model's output does not depend on its input through autograd")
    users = _graph_consumers(out.grad_fn)
    start = next((n for n in users if getattr(n, "variable", None) is leaf), None)
    if start is None:
        raise NotLinear("the model's output does not depend on its input through autograd")
    node: Any = start
    passed: list[str] = []
    pad: tuple[int, ...] = ()
    per_image = math.prod(leaf.shape[1:])
    while True:
        consumers = users.get(node, [])
        if len(consumers) != 1:
            raise NotLinear(f"the input reaches {len(consumers)} operations at once (after {passed or 'nothing'}); "
                            "collisions of one linear layer need a single path")
        user, slot = consumers[0]
        name = user.name()
        if name in PASS_THROUGH or (name in OFFSETS and _constant_slots(user, slot)) or (
                name in SCALES and _constant_slots(user, slot) and _scalar_factor(user, slot)):
            passed.append(name)
            node = user
            continue
        if name == "ConstantPadNdBackward0" and not pad:
            pad = tuple(int(p) for p in user._saved_pad)
            if any(p < 0 for p in pad) or len(pad) > 4:
                raise NotLinear(f"the input is cropped or padded in more than two dimensions ({list(pad)})")
            passed.append(name)
            node = user
            continue
        if name == "ConvolutionBackward0" and slot == 0 and _constant_slots(user, 0):
            return _conv(user, leaf, per_image, pad, passed)
        if name in ("AddmmBackward0", "MmBackward0") and slot == (1 if name == "AddmmBackward0" else 0) \
                and _constant_slots(user, slot) and not pad:
            return _linear(user, leaf, per_image, passed)
        raise NotLinear(f"the first operation on the input is {name.removesuffix('Backward0')}"
                        + (f" (after {passed})" if passed else "") + ", not a Conv2d or Linear layer")


def _conv(node: Any, leaf: torch.Tensor, per_image: int, pad: tuple[int, ...], passed: list[str]) -> FirstOperator:
    if bool(node._saved_transposed):
        raise NotLinear("the first layer is a transposed convolution")
    seen = node._saved_input
    if seen is None or seen.dim() != 4 or seen.shape[0] != leaf.shape[0]:
        raise NotLinear("the first convolution does not read the images one by one")
    c, h, w = (int(s) for s in seen.shape[1:])
    h -= (pad[2] + pad[3]) if len(pad) == 4 else 0
    w -= (pad[0] + pad[1]) if len(pad) >= 2 else 0
    if c * h * w != per_image:
        raise NotLinear("the first convolution reads a reshaped input of another size")
    weight = node._saved_weight.detach().to(torch.float64)
    return FirstOperator(OperatorKind.CONV2D, weight, (c, h, w), pad=pad,
                         stride=_pair(node._saved_stride), padding=_pair(node._saved_padding),
                         dilation=_pair(node._saved_dilation), groups=int(node._saved_groups), passed=tuple(passed))


def _linear(node: Any, leaf: torch.Tensor, per_image: int, passed: list[str]) -> FirstOperator:
    mat1 = node._saved_mat1_sym_sizes if hasattr(node, "_saved_mat1_sym_sizes") else None
    if mat1 is None or len(mat1) != 2 or int(mat1[0]) != leaf.shape[0] or int(mat1[1]) != per_image:
        raise NotLinear("the first matrix product does not read each image as one flat vector")
    weight = node._saved_mat2.detach().to(torch.float64).T.contiguous()  # (out, D)
    return FirstOperator(OperatorKind.LINEAR, weight, (per_image,), passed=tuple(passed))


def _pair(v: Any) -> tuple[int, int]:
    vals = [int(a) for a in v]
    return (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])
