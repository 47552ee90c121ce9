"""ONNX files of opsets 17-23 as torch 2.15's exporter writes them (weights in an external data file),
converted by both routes and checked against onnxruntime, the reference implementation.

- every operator version added by :mod:`worker.engine.models.onnx_converters`, one node at a time,
  against onnxruntime on the same input (fast, graphs written with ``onnx.helper``);
- a small CNN, torchvision's resnet18 and timm's ViT-tiny exported with the defaults and with opsets
  17, 18, 20 and 21: loaded as the CLI loads them (data file beside the model), equal top-1 and
  logits within 1e-4 relative of onnxruntime's, and gradients that let PGD find adversarials;
- the down-conversion route on the same files, and on a graph of opset 23, which only it converts.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tests.onnx_exports import (  # noqa: E402
    ARCHS,
    SIDES,
    VARIANTS,
    assert_matches_onnxruntime,
    card,
    exported,
    images,
    onnxruntime_logits,
)
from worker.engine.attacks import make_attack  # noqa: E402
from worker.engine.errors import ModelLoadError  # noqa: E402
from worker.engine.models import load_classifier  # noqa: E402
from worker.engine.models.onnx_converters import converted_versions  # noqa: E402
from worker.engine.models.onnx_models import convert_onnx, read_onnx_with_data  # noqa: E402
from worker.engine.models.onnx_versions import downconvert, standard_opset  # noqa: E402

# -- one operator at a time ------------------------------------------------------------------------

X = np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)


def _i64(name: str, values: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _graph_model(op: str, opset: int, attrs: dict, consts: list[TensorProto], outputs: int = 1) -> onnx.ModelProto:
    inputs = ["x"] + [c.name if c.name else "" for c in consts]
    node = helper.make_node(op, inputs, [f"y{i}" for i in range(outputs)], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X.shape))],
                              [helper.make_empty_tensor_value_info(f"y{i}") for i in range(outputs)],
                              initializer=[c for c in consts if c.name])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _absent() -> TensorProto:
    return TensorProto()  # an empty input name: an optional input left out


ONE_NODE = {
    "reduce_mean_axes_input": ("ReduceMean", 18, {"keepdims": 1}, [_i64("axes", [2, 3])], 1),
    "reduce_mean_no_axes": ("ReduceMean", 18, {"keepdims": 0}, [], 1),
    "reduce_mean_noop": ("ReduceMean", 18, {"noop_with_empty_axes": 1}, [], 1),
    "reduce_max_20": ("ReduceMax", 20, {"keepdims": 0}, [_i64("axes", [-1, 1])], 1),
    "reduce_min_18": ("ReduceMin", 18, {}, [_i64("axes", [3])], 1),
    "reduce_l2_18": ("ReduceL2", 18, {"keepdims": 0}, [_i64("axes", [1])], 1),
    "reduce_logsumexp_18": ("ReduceLogSumExp", 18, {}, [_i64("axes", [2, 3])], 1),
    "reduce_sumsquare_18": ("ReduceSumSquare", 18, {}, [_i64("axes", [0])], 1),
    "reduce_prod_18": ("ReduceProd", 18, {"keepdims": 0}, [_i64("axes", [2, 3])], 1),
    "reduce_l1_18": ("ReduceL1", 18, {}, [_i64("axes", [1, 2])], 1),
    "reshape_allowzero_21": ("Reshape", 21, {"allowzero": 1}, [_i64("shape", [2, 4, 36])], 1),
    "reshape_copy_zero_19": ("Reshape", 19, {}, [_i64("shape", [0, 0, -1])], 1),
    "reshape_allowzero_14": ("Reshape", 18, {"allowzero": 1}, [_i64("shape", [8, -1])], 1),
    "pad_constant_axes_18": ("Pad", 18, {}, [_i64("pads", [1, 2, 0, 3]),
                                             numpy_helper.from_array(np.array(1.5, np.float32), "v"),
                                             _i64("axes", [2, 3])], 1),
    "pad_reflect_19": ("Pad", 19, {"mode": "reflect"}, [_i64("pads", [0, 0, 1, 2, 0, 0, 2, 1])], 1),
    "pad_edge_21": ("Pad", 21, {"mode": "edge"}, [_i64("pads", [0, 0, 2, 2, 0, 0, 1, 1])], 1),
    "pad_wrap_19": ("Pad", 19, {"mode": "wrap"}, [_i64("pads", [0, 0, 1, 2, 0, 0, 2, 1])], 1),
    "pad_negative_18": ("Pad", 18, {}, [_i64("pads", [0, 0, -1, 1, 0, 0, 2, -2])], 1),
    "split_num_outputs_18": ("Split", 18, {"axis": 2, "num_outputs": 3}, [], 3),
    "split_sizes_18": ("Split", 18, {"axis": 3}, [_i64("split", [1, 5])], 2),
    "resize_nearest_18": ("Resize", 18, {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                         "nearest_mode": "floor"},
                          [_absent(), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")], 1),
    "resize_nearest_exact_19": ("Resize", 19, {"mode": "nearest", "nearest_mode": "round_prefer_ceil"},
                                [_absent(), _absent(), _i64("sizes", [2, 4, 9, 15])], 1),
    "resize_linear_half_pixel_19": ("Resize", 19, {"mode": "linear"},
                                    [_absent(), numpy_helper.from_array(np.array([1, 1, 1.5, 2], np.float32), "s")],
                                    1),
    "resize_nearest_13": ("Resize", 13, {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                                         "nearest_mode": "floor"},
                          [_absent(), numpy_helper.from_array(np.array([1, 1, 3, 2], np.float32), "scales")], 1),
    "resize_linear_align_corners_18": ("Resize", 18, {"mode": "linear",
                                                      "coordinate_transformation_mode": "align_corners"},
                                       [_absent(), _absent(), _i64("sizes", [2, 4, 11, 4])], 1),
    "resize_linear_pytorch_half_pixel_18": ("Resize", 18, {"mode": "linear", "antialias": 0,
                                                           "coordinate_transformation_mode": "pytorch_half_pixel"},
                                            [_absent(), _absent(), _i64("sizes", [2, 4, 3, 12])], 1),
    "gelu_20": ("Gelu", 20, {}, [], 1),
    "gelu_tanh_20": ("Gelu", 20, {"approximate": "tanh"}, [], 1),
    "layer_norm_axis1_18": ("LayerNormalization", 18, {"axis": 1, "epsilon": 1e-3},
                            [numpy_helper.from_array(np.linspace(0.5, 2, 144, dtype=np.float32).reshape(4, 6, 6),
                                                     "scale")], 1),
    "average_pool_19": ("AveragePool", 19, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, [], 1),
    "identity_21": ("Identity", 21, {}, [], 1),
    "flatten_21": ("Flatten", 21, {"axis": 2}, [], 1),
    "transpose_21": ("Transpose", 21, {"perm": [0, 2, 3, 1]}, [], 1),
    "unsqueeze_21": ("Unsqueeze", 21, {}, [_i64("axes", [0])], 1),
    "shape_21": ("Shape", 21, {"start": 1}, [], 1),
    "cast_21": ("Cast", 21, {"to": TensorProto.DOUBLE}, [], 1),
}


def _run_both(model: onnx.ModelProto) -> tuple[list[np.ndarray], list[np.ndarray]]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": X})
    module, route = convert_onnx(model, label="one-node.onnx")
    assert route == "direct"
    got = module(torch.from_numpy(X))
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    return [np.asarray(g.detach().numpy() if isinstance(g, torch.Tensor) else g) for g in got], want


@pytest.mark.parametrize("case", sorted(ONE_NODE))
def test_each_converted_operator_version_matches_onnxruntime(case: str) -> None:
    op, opset, attrs, consts, outputs = ONE_NODE[case]
    model = _graph_model(op, opset, attrs, consts, outputs)
    got, want = _run_both(model)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape, (g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("op", "opset", "attrs", "consts", "words"), [
    ("Resize", 18, {"mode": "linear", "antialias": 1},
     [_absent(), numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "s")], "antialias=1"),
    ("Resize", 19, {"mode": "nearest"},  # half_pixel with round_prefer_floor: torch has no such rounding
     [_absent(), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")], "round_prefer_floor"),
    ("Resize", 13, {"mode": "linear", "coordinate_transformation_mode": "asymmetric"},  # onnx2torch only warned
     [_absent(), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")], "'asymmetric'"),
    ("AveragePool", 19, {"kernel_shape": [2, 2], "dilations": [2, 2]}, [], "dilations"),
])
def test_what_no_route_converts_exactly_is_refused_by_name(op: str, opset: int, attrs: dict, consts: list,
                                                           words: str) -> None:
    with pytest.raises(ModelLoadError, match="no exact torch conversion") as info:
        convert_onnx(_graph_model(op, opset, attrs, consts), label="m.onnx")
    assert words in info.value.message


def test_coverage_table_lists_every_added_version() -> None:
    table = converted_versions()
    for op in ("Reshape", "Constant", "Pad", "Split", "ReduceMean", "ReduceMax", "Resize", "Gelu"):
        assert op in table, op
    assert table["Reshape"] == [5, 13, 14, 19, 21] and table["Gelu"] == [20] and table["ReduceMax"] == [18, 20]


# -- exported classifiers ----------------------------------------------------------------------------

CASES = [(a, v) for a in ARCHS for v in VARIANTS]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "variant"), CASES, ids=[f"{a}-{v}" for a, v in CASES])
def test_exported_classifier_matches_onnxruntime(arch: str, variant: str) -> None:
    path = exported(arch, variant)
    model = onnx.load(str(path), load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
    assert (path.parent / "model.onnx.data").is_file()
    opset = standard_opset(model)
    assert opset >= 17 and (variant == "default" or opset >= int(variant))
    classifier = load_classifier(path, card(arch))  # as the CLI loads it: the data file lies beside
    x = images(4, SIDES[arch])
    got = classifier.logits(x).detach().numpy()
    assert_matches_onnxruntime(got, onnxruntime_logits(path, x))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_flow_and_pgd_finds_adversarials(arch: str) -> None:
    classifier = load_classifier(exported(arch), card(arch))
    x = images(4, SIDES[arch], seed=1)
    probe = x.clone().requires_grad_(True)
    classifier(probe).logsumexp(dim=1).sum().backward()
    assert probe.grad is not None and probe.grad.abs().sum() > 0
    labels = classifier.logits(x).argmax(dim=1)
    result = make_attack("pgd", norm="linf", steps=3)(classifier, x, labels, [0.3])
    assert result.success.any(), "PGD found no adversarial: gradients do not flow through the converted model"


DOWN = [(a, v) for a in ARCHS for v in ("18", "20", "21")]


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "variant"), DOWN, ids=[f"{a}-{v}" for a, v in DOWN])
def test_downconversion_route_matches_onnxruntime_where_exact(arch: str, variant: str) -> None:
    path = exported(arch, variant)
    model = read_onnx_with_data(path)
    if arch == "vit_tiny" and variant != "18":  # Gelu is new in opset 20: nothing older computes it
        with pytest.raises(ModelLoadError, match="Gelu"):
            downconvert(model, 17, label=path.name)
        return
    older = downconvert(model, 17, label=path.name)
    assert standard_opset(older) == 17
    module, route = convert_onnx(older, label=path.name)
    assert route == "direct"
    x = images(2, SIDES[arch])
    z = (x - 0.5) / 0.25
    got = module(z).detach().numpy()
    assert_matches_onnxruntime(got, onnxruntime_logits(path, x))


class _Zoo(nn.Module):
    """The operators whose versions changed in opsets 18-23, in one small classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.avg_pool2d(torch.relu(self.conv(x)), 2)
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear")
        x = nn.functional.pad(x, (1, 1, 2, 0), mode="reflect")
        a, b = torch.split(x, [1, 3], dim=1)
        return self.fc(torch.cat([a, nn.functional.gelu(b)], 1).amax((2, 3)))


def test_opset_23_is_converted_by_downconversion(tmp_path: Path) -> None:
    path = tmp_path / "zoo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Zoo().eval(), (torch.rand(2, 3, 16, 16),), str(path), opset_version=23, verbose=False)
    model = read_onnx_with_data(path)
    assert standard_opset(model) == 23
    module, route = convert_onnx(model, label=path.name)
    assert route == "opset 23 -> 21"
    x = images(2, 16)
    got = module((x - 0.5) / 0.25).detach().numpy()
    assert_matches_onnxruntime(got, onnxruntime_logits(path, x))


@pytest.mark.slow
def test_cli_audits_a_default_export_with_its_data_beside(tmp_path: Path) -> None:
    """``robustaudit audit``: the model's data file beside it is read under the same rules."""
    from tests.onnx_exports import copy_export
    from worker.engine.cli import main

    model = copy_export("cnn", "default", tmp_path / "net")
    (model.parent / "model.card.json").write_text(json.dumps(card("cnn")))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": str(model), "dataset": {"kind": "builtin", "name": "digits", "n_samples": 12},
                                "suites": {"clean": {}}}))
    assert main(["audit", "--quiet", "--allow-no-gates", "--config", str(spec), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["format"] == "onnx" and report["suites"]["clean"]["status"] == "completed"
