"""Hostile external data in ONNX files: every reference, in every tensor slot, is checked before anything
is read, and nothing outside the upload's own folder (or zip) is ever opened.

The opens are watched with a Python audit hook (``open`` events of ``open()`` and ``os.open``): each
case puts a marker file outside the upload that its reference aims at, and asserts the loader refused
the model without opening it. The good model shows the hook does see the data file being opened.
"""

from __future__ import annotations

import os
import stat
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from worker.engine.errors import ModelLoadError  # noqa: E402
from worker.engine.models import load_classifier  # noqa: E402
from worker.engine.models.onnx_bundle import check_bundle, write_bundle  # noqa: E402
from worker.engine.models.onnx_models import read_onnx_with_data  # noqa: E402

CARD = {"format": "onnx", "num_classes": 5, "input_size": [3, 8, 8]}
MARKER = "secret-of-another-tenant.bin"
_OPENED: list[list[str]] = []


def _hook(event: str, args: tuple) -> None:
    if event == "open" and _OPENED:
        _OPENED[-1].append(os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else str(args[0]))


sys.addaudithook(_hook)


@contextmanager
def opens() -> Iterator[list[str]]:
    """The paths opened inside the block (by this process)."""
    _OPENED.append([])
    try:
        yield _OPENED[-1]
    finally:
        _OPENED.pop()


def tiny_model() -> onnx.ModelProto:
    """x -> Conv -> ReduceMean (axes input, opset 18) -> Flatten -> Gemm: five logits."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv.w"),
             numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc.w"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fc.b"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    nodes = [helper.make_node("Conv", ["x", "conv.w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c", "axes"], ["m"], keepdims=0),
             helper.make_node("Gemm", ["m", "fc.w", "fc.b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def external(tensor: TensorProto, location: str, offset: int | None = None, length: int | None = None) -> None:
    """Mark ``tensor`` as stored in ``location`` (its inline bytes dropped)."""
    tensor.ClearField("raw_data")
    for field in ("float_data", "int64_data", "int32_data"):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    entries = {"location": location, "offset": offset, "length": length}
    for key, value in entries.items():
        if value is not None:
            tensor.external_data.add(key=key, value=str(value))


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """``upload/model.onnx`` + ``upload/model.onnx.data``, and the marker outside ``upload/``."""
    up = tmp_path / "tenant-a" / "upload"
    up.mkdir(parents=True)
    onnx.save_model(tiny_model(), str(up / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    (tmp_path / "tenant-b").mkdir()
    (tmp_path / "tenant-b" / MARKER).write_bytes(bytes(4096))
    (up.parent / MARKER).write_bytes(bytes(4096))
    return up


def rewrite(path: Path, change: Callable[[onnx.ModelProto], None]) -> None:
    model = onnx.load(str(path), load_external_data=False)
    change(model)
    path.write_bytes(model.SerializeToString())


def test_default_layout_loads_and_the_hook_sees_the_data_file(folder: Path) -> None:
    with opens() as seen:
        classifier = load_classifier(folder / "model.onnx", CARD)
    assert any(p.endswith("model.onnx.data") for p in seen), seen
    model = tiny_model()
    w = torch.tensor(numpy_helper.to_array(model.graph.initializer[0]))
    fc_w, fc_b = (torch.tensor(numpy_helper.to_array(t)) for t in model.graph.initializer[1:3])
    x = torch.rand(3, 3, 8, 8)
    want = torch.nn.functional.conv2d(x, w, padding=1).mean((2, 3)) @ fc_w.T + fc_b
    torch.testing.assert_close(classifier.logits(x), want, rtol=1e-5, atol=1e-5)


def _first(model: onnx.ModelProto) -> TensorProto:
    return model.graph.initializer[0]


HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "dotdot": (lambda up: rewrite(up / "model.onnx", lambda m: external(_first(m), f"../{MARKER}", 0, 432)),
               "names a folder"),
    "dotdot_alone": (lambda up: rewrite(up / "model.onnx", lambda m: external(_first(m), "..", 0, 432)), "is '..'"),
    "absolute": (lambda up: rewrite(up / "model.onnx", lambda m: external(
        _first(m), str(up.parent.parent / "tenant-b" / MARKER), 0, 432)), "names a folder"),
    "symlink": (lambda up: (os.symlink(up.parent.parent / "tenant-b" / MARKER, up / "link.bin"),
                            rewrite(up / "model.onnx", lambda m: external(_first(m), "link.bin", 0, 432))),
                "symbolic link"),
    "hard_link_to_another_tenants_file": (
        lambda up: (os.link(up.parent.parent / "tenant-b" / MARKER, up / "hard.bin"),
                    rewrite(up / "model.onnx", lambda m: external(_first(m), "hard.bin", 0, 432))), "hard links"),
    "fifo": (lambda up: (os.mkfifo(up / "pipe"), rewrite(up / "model.onnx", lambda m: external(_first(m), "pipe", 0,
                                                                                              432))),
             "not a regular file"),
    "offset_past_end": (lambda up: rewrite(up / "model.onnx", lambda m: external(
        _first(m), "model.onnx.data", (up / "model.onnx.data").stat().st_size + 1, 432)), "refused before reading"),
    "length_2_pow_40": (lambda up: rewrite(up / "model.onnx", lambda m: external(
        _first(m), "model.onnx.data", 0, 2**40)), "not the tensor's size"),
    "shape_2_pow_40": (lambda up: rewrite(up / "model.onnx", lambda m: (
        m.graph.initializer[0].ClearField("dims"), m.graph.initializer[0].dims.extend([2**36, 4]),
        external(m.graph.initializer[0], "model.onnx.data", 0, 2**40))), "refused before reading"),
    "overlapping_ranges": (lambda up: rewrite(up / "model.onnx", lambda m: external(
        m.graph.initializer[2], "model.onnx.data", 0, 20)), "overlaps"),
    "missing_file": (lambda up: rewrite(up / "model.onnx", lambda m: external(_first(m), "nothing.bin", 0, 432)),
                     "is not beside the model"),
    "unknown_key": (lambda up: rewrite(up / "model.onnx", lambda m: _first(m).external_data.add(
        key="basepath", value="/")), "unknown or repeated"),
    "sparse_tensor_attribute": (lambda up: rewrite(up / "model.onnx", _sparse_attribute), "sparse values"),
    "sparse_initializer": (lambda up: rewrite(up / "model.onnx", _sparse_initializer), "sparse initializer"),
    "training_info_initializer": (lambda up: rewrite(up / "model.onnx", _training_info), "training_info[0]"),
    "training_info_attribute": (lambda up: rewrite(up / "model.onnx", _training_attribute), "training_info[0]"),
    "subgraph_initializer": (lambda up: rewrite(up / "model.onnx", _subgraph), "subgraph"),
}


def _outside_tensor(name: str) -> TensorProto:
    t = numpy_helper.from_array(np.zeros(4, np.float32), name)
    external(t, f"../{MARKER}", 0, 16)
    return t


def _sparse_attribute(m: onnx.ModelProto) -> None:
    sparse = helper.make_sparse_tensor(_outside_tensor("sv"), numpy_helper.from_array(np.arange(4, dtype=np.int64),
                                                                                      "si"), [8])
    m.graph.node.append(helper.make_node("Constant", [], ["unused"], sparse_value=sparse))


def _sparse_initializer(m: onnx.ModelProto) -> None:
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(np.zeros(4, np.float32), "s"), _outside_tensor("si"), [8]))
    m.graph.sparse_initializer[0].indices.data_type = TensorProto.INT64


def _training_info(m: onnx.ModelProto) -> None:
    init = helper.make_graph([], "init", [], [], initializer=[_outside_tensor("t")])
    m.training_info.append(onnx.TrainingInfoProto(initialization=init))


def _training_attribute(m: onnx.ModelProto) -> None:
    node = helper.make_node("Constant", [], ["k"], value=_outside_tensor("k"))
    algorithm = helper.make_graph([node], "algo", [], [helper.make_tensor_value_info("k", TensorProto.FLOAT, [4])])
    m.training_info.append(onnx.TrainingInfoProto(algorithm=algorithm))


def _subgraph(m: onnx.ModelProto) -> None:
    branch = helper.make_graph([helper.make_node("Identity", ["t"], ["o"])], "then", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])],
                               initializer=[_outside_tensor("t")])
    m.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch))


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_external_data_is_refused_before_anything_outside_is_opened(folder: Path, case: str) -> None:
    plant, words = HOSTILE[case]
    plant(folder)
    with opens() as seen, pytest.raises(ModelLoadError) as info:
        load_classifier(folder / "model.onnx", CARD)
    assert words in info.value.message, info.value.message
    assert not any(MARKER in p or p.endswith(("hard.bin", "link.bin", "pipe")) for p in seen), seen
    assert str(folder) not in info.value.message  # file names, never server paths


# -- the zip --------------------------------------------------------------------------------------

def _zip(dst: Path, members: dict[str, bytes], modes: dict[str, int] | None = None) -> Path:
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if modes and name in modes:
                info.create_system, info.external_attr = 3, modes[name] << 16
            z.writestr(info, data)
    return dst


@pytest.fixture()
def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("model.onnx")}


@pytest.mark.parametrize("inside", ["", "net/"])
def test_zip_of_model_and_data_loads_like_the_folder(tmp_path: Path, folder: Path, files: dict[str, bytes],
                                                     inside: str) -> None:
    bundle = _zip(tmp_path / "net.zip", {inside + k: v for k, v in files.items()})
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(load_classifier(bundle, CARD).logits(x), load_classifier(folder / "model.onnx",
                                                                                        CARD).logits(x))


def test_bundle_written_from_two_parts_is_a_plain_zip_that_loads(tmp_path: Path, folder: Path) -> None:
    with (folder / "model.onnx").open("rb") as m, (folder / "model.onnx.data").open("rb") as d, \
            (tmp_path / "b.zip").open("wb") as out:
        write_bundle(out, ("model.onnx", m), [("model.onnx.data", d)])
    assert check_bundle(tmp_path / "b.zip", name="b.zip").files == {"model.onnx.data": 5 * 4 + 20 * 4 + 108 * 4 + 16}
    assert load_classifier(tmp_path / "b.zip", CARD).logits(torch.rand(1, 3, 8, 8)).shape == (1, 5)
    for bad in ("../model.onnx.data", "/abs", "a\\b", ""):
        with (folder / "model.onnx").open("rb") as m, tmp_path.joinpath("x.zip").open("wb") as out:
            with pytest.raises(ModelLoadError, match="refused"):
                write_bundle(out, ("model.onnx", m), [(bad, m)])


@pytest.mark.parametrize(("members", "modes", "words"), [
    ({"../model.onnx.data": b"x", "model.onnx": b""}, None, "not plain"),
    ({"/etc/model.onnx.data": b"x", "model.onnx": b""}, None, "absolute path"),
    ({"a/b/model.onnx": b""}, None, "more than one folder deep"),
    ({"model.onnx": b"", "model.onnx.data": f"../../tenant-b/{MARKER}".encode()},
     {"model.onnx.data": stat.S_IFLNK | 0o777}, "symbolic link"),
    ({"model.onnx": b"", "dev": b""}, {"dev": stat.S_IFCHR | 0o666}, "character device"),
    ({"model.onnx": b"", "other.onnx": b""}, None, "exactly one .onnx"),
    ({"model.onnx.data": b""}, None, "found 0"),
])
def test_zip_members_are_checked_before_anything_is_decompressed(tmp_path: Path, members: dict[str, bytes],
                                                                  modes: dict[str, int] | None, words: str) -> None:
    bundle = _zip(tmp_path / "net.zip", members, modes)
    with opens() as seen, pytest.raises(ModelLoadError) as info:
        load_classifier(bundle, CARD)
    assert words in info.value.message, info.value.message
    assert not any(MARKER in p for p in seen)


def test_zip_location_must_name_a_member_beside_the_model(tmp_path: Path, files: dict[str, bytes]) -> None:
    model = onnx.load_model_from_string(files["model.onnx"])
    for t in model.graph.initializer:
        t.external_data[0].value = "elsewhere.bin"
    bundle = _zip(tmp_path / "net.zip", {"net/model.onnx": model.SerializeToString(),
                                         "elsewhere.bin": files["model.onnx.data"]})
    with pytest.raises(ModelLoadError, match="'elsewhere.bin' is not in the zip beside"):
        read_onnx_with_data(bundle)


def test_a_model_without_data_files_refuses_external_references(tmp_path: Path, folder: Path) -> None:
    """A bare .onnx whose data file is missing: the reference is refused, with the file's name only."""
    (folder / "model.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="'model.onnx.data' is not beside the model"):
        load_classifier(folder / "model.onnx", CARD)
