"""Model loading: every format round-trips, every bad checkpoint or card fails clearly."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.engine.model_factories import (
    NUM_CLASSES,
    NaNModel,
    Opaque,
    TinyCNN,
    card_dict,
    images,
    normalised,
    save_export,
    save_torchscript,
    write_card,
)
from worker.engine.card import ModelCard
from worker.engine.errors import ModelCardError, ModelLoadError, ModelOutputError
from worker.engine.models import SUPPORTED_ARCHS, load_classifier, load_safetensors, sha256_file
from worker.engine.models.torchvision_archs import build_arch

RESNET_CARD = {"arch": "resnet18", "num_classes": NUM_CLASSES, "input_size": [3, 32, 32],
               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def resnet_card(fmt: str, **overrides: object) -> dict:
    return {**RESNET_CARD, "format": fmt, **overrides}


@pytest.fixture(scope="module")
def tiny() -> TinyCNN:
    return TinyCNN()


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    return build_arch(ModelCard.from_dict(resnet_card("state_dict"))).eval()


@pytest.fixture(scope="module")
def export_files(tmp_path_factory: pytest.TempPathFactory, tiny: TinyCNN) -> dict[str, Path]:
    """Exporting costs about a second each: do it once for the module."""
    root = tmp_path_factory.mktemp("export")
    return {"dynamic": save_export(tiny, root / "dynamic.pt2", dynamic_batch=True, max_batch=4),
            "static": save_export(tiny, root / "static.pt2", dynamic_batch=False)}


def assert_logits_match(classifier: torch.nn.Module, eager: torch.nn.Module, x: torch.Tensor) -> None:
    expected = eager(normalised(x, classifier.card))
    torch.testing.assert_close(classifier.logits(x), expected, rtol=1e-5, atol=1e-5)


# -- round trips ----------------------------------------------------------------------------------

def test_torchscript_round_trip_with_card_beside_file(tmp_path: Path, tiny: TinyCNN) -> None:
    path = save_torchscript(tiny, tmp_path / "tiny.pt")
    write_card(path, card_dict("torchscript"))
    classifier = load_classifier(path)
    assert classifier.fixed_batch is None
    assert_logits_match(classifier, tiny, images(5))


def test_torchscript_traced_model_loads(tmp_path: Path, tiny: TinyCNN) -> None:
    path = tmp_path / "traced.pt"
    torch.jit.trace(tiny, images(2)).save(str(path))
    assert_logits_match(load_classifier(path, card_dict("torchscript")), tiny, images(4))


def test_export_dynamic_batch(export_files: dict[str, Path], tiny: TinyCNN) -> None:
    classifier = load_classifier(export_files["dynamic"], card_dict("export"))
    assert classifier.fixed_batch is None
    assert classifier.batch.size == 4  # the program's Dim(max=4) caps the batch
    assert_logits_match(classifier, tiny, images(9))


def test_export_gradients_reach_the_input(export_files: dict[str, Path]) -> None:
    classifier = load_classifier(export_files["static"], card_dict("export"))
    x = images(3).requires_grad_(True)
    classifier(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_export_static_batch_is_padded_and_chunked(export_files: dict[str, Path], tiny: TinyCNN) -> None:
    classifier = load_classifier(export_files["static"], card_dict("export"))
    assert classifier.fixed_batch == 1
    assert_logits_match(classifier, tiny, images(5))


def test_export_input_size_must_match_card(export_files: dict[str, Path]) -> None:
    with pytest.raises(ModelCardError, match=r"input_size.*\[3, 16, 16\]"):
        load_classifier(export_files["static"], card_dict("export", input_size=[3, 16, 16]))


def test_export_with_other_extension_loads(tmp_path: Path, export_files: dict[str, Path]) -> None:
    path = tmp_path / "renamed.bin"
    path.write_bytes(export_files["dynamic"].read_bytes())
    assert load_classifier(path, card_dict("export")).fixed_batch is None


def test_safetensors_round_trip_resnet18(tmp_path: Path, resnet: torch.nn.Module) -> None:
    path = tmp_path / "resnet.safetensors"
    save_file(resnet.state_dict(), str(path))
    classifier = load_classifier(path, resnet_card("safetensors"))
    assert_logits_match(classifier, resnet, images(3, (3, 32, 32)))


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix"])
def test_state_dict_variants(tmp_path: Path, resnet: torch.nn.Module, wrap: str) -> None:
    sd = resnet.state_dict()
    payload = {"plain": sd, "state_dict": {"state_dict": sd, "epoch": 3},
               "model": {"model": sd, "optimizer_step": 10},
               "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    path = tmp_path / "resnet.pth"
    torch.save(payload, path)
    classifier = load_classifier(path, resnet_card("state_dict"))
    assert_logits_match(classifier, resnet, images(2, (3, 32, 32)))


def test_vit_b_16_builds_from_card_and_loads(tmp_path: Path) -> None:
    card = resnet_card("state_dict", arch="vit_b_16")
    vit = build_arch(ModelCard.from_dict(card)).eval()
    assert vit.image_size == 32
    path = tmp_path / "vit.pt"
    torch.save(vit.state_dict(), path)
    classifier = load_classifier(path, card)
    assert_logits_match(classifier, vit, images(2, (3, 32, 32)))


def test_supported_archs_include_the_common_ones() -> None:
    assert {"resnet18", "resnet50", "vgg16", "mobilenet_v3_large", "efficientnet_b0",
            "vit_b_16"} <= set(SUPPORTED_ARCHS)


def test_engine_import_does_not_import_torchvision() -> None:
    code = "import sys, worker.engine.models; assert 'torchvision' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


# -- the wrapper --------------------------------------------------------------------------------

def test_describe(tmp_path: Path, tiny: TinyCNN) -> None:
    path = save_torchscript(tiny, tmp_path / "tiny.pt")
    info = load_classifier(path, card_dict("torchscript")).describe()
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_file(path)
    assert info["params"] == sum(p.numel() for p in tiny.parameters())
    assert info["format"] == "torchscript"
    assert info["num_classes"] == NUM_CLASSES
    assert info["input_size"] == [3, 8, 8]
    assert info["name"] == "tiny"


def test_logits_batching_equals_single_pass(tmp_path: Path, tiny: TinyCNN) -> None:
    classifier = load_classifier(save_torchscript(tiny, tmp_path / "tiny.pt"), card_dict("torchscript"))
    x = images(10)
    single = classifier.logits(x)
    classifier.batch.size = 3
    torch.testing.assert_close(classifier.logits(x), single)


# -- safetensors, read by the safetensors library ------------------------------------------------

def test_safetensors_reader_matches_the_package(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f64": torch.randn(3, 2, dtype=torch.float64, generator=g),
        "f32": torch.randn(4, 3, 2, generator=g),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "i64": torch.arange(-3, 4, dtype=torch.int64),
        "i32": torch.arange(7, dtype=torch.int32).view(7, 1),
        "i16": torch.tensor([-2, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 5, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    ours, theirs = load_safetensors(path), load_file(str(path))
    assert ours.keys() == theirs.keys() == tensors.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, name
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=0)


def raw_safetensors(path: Path, header: dict, data: bytes, header_len: int | None = None) -> Path:
    """A hand-made file, for headers the safetensors package would never write."""
    text = json.dumps(header).encode()
    n = len(text) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + text + data)
    return path


F32_PAIR = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(("header", "data", "header_len", "match"), [
    (F32_PAIR, b"\0" * 4, None, "truncated or corrupt"),  # data truncated
    (F32_PAIR, b"\0" * 8, 10**6, "runs past the end"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 8, None, "run beyond"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape and dtype need"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None, "overlap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None, "gap"),
    (F32_PAIR, b"\0" * 12, None, "bytes after the last tensor"),
    ({"a": {"dtype": "X64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "not a valid safetensors"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None, "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "missing field `data_offsets`"),
    ({"__metadata__": {"k": 1}, **F32_PAIR}, b"\0" * 8, None, "expected a string"),
    ({"a": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\0\7", None, "BOOL"),
])
def test_malformed_safetensors_is_refused(tmp_path: Path, header: dict, data: bytes,
                                          header_len: int | None, match: str) -> None:
    path = raw_safetensors(tmp_path / "bad.safetensors", header, data, header_len)
    with pytest.raises(ModelLoadError, match=match):
        load_safetensors(path)


@pytest.mark.parametrize("content", [b"", b"\1\0", b"\5\0\0\0\0\0\0\0[1,2]", b"\4\0\0\0\0\0\0\0{\xff}}"])
def test_safetensors_header_must_be_a_json_object(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="not a safetensors file"):
        load_safetensors(path)


def test_truncated_safetensors_fails_at_load(tmp_path: Path, resnet: torch.nn.Module) -> None:
    path = tmp_path / "resnet.safetensors"
    save_file({k: v for k, v in list(resnet.state_dict().items())[:4]}, str(path))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_classifier(path, resnet_card("safetensors"))


# -- errors ---------------------------------------------------------------------------------------

def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="checkpoint not found: .*nope.pt"):
        load_classifier(tmp_path / "nope.pt", card_dict("torchscript"))


def test_missing_card_says_where_it_looked(tmp_path: Path, tiny: TinyCNN) -> None:
    path = save_torchscript(tiny, tmp_path / "tiny.pt")
    with pytest.raises(ModelCardError, match=r"looked for .*tiny\.card\.json"):
        load_classifier(path)


def test_missing_card_path(tmp_path: Path, tiny: TinyCNN) -> None:
    path = save_torchscript(tiny, tmp_path / "tiny.pt")
    with pytest.raises(ModelCardError, match="model card not found"):
        load_classifier(path, tmp_path / "other.card.json")


@pytest.mark.parametrize("fmt", ["keras", "module"])  # "module" is the Python API's, never a file's
def test_unknown_format_in_card(tmp_path: Path, tiny: TinyCNN, fmt: str) -> None:
    with pytest.raises(ModelCardError, match="'format' must be one of"):
        ModelCard.from_dict(card_dict(fmt))
    path = save_torchscript(tiny, tmp_path / "tiny.pt")
    with pytest.raises(ModelCardError, match="'format' must be one of"):
        load_classifier(path, card_dict(fmt))


def test_unknown_arch_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(ModelCardError,
                       match=r"'resnet9000' is not a torchvision classification model; close: .*'resnet18'"):
        load_classifier(path, resnet_card("state_dict", arch="resnet9000"))


def test_torchvision_arch_needs_three_channels(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(ModelCardError, match="3-channel"):
        load_classifier(path, resnet_card("state_dict", input_size=[1, 32, 32], mean=[0.5], std=[0.5]))


def test_vit_needs_square_input() -> None:
    card = ModelCard.from_dict(resnet_card("safetensors", arch="vit_b_16", input_size=[3, 32, 48]))
    with pytest.raises(ModelCardError, match="square"):
        build_arch(card)


def test_whole_pickled_module_is_refused(tmp_path: Path, tiny: TinyCNN) -> None:
    path = tmp_path / "whole.pt"
    torch.save(tiny, path)
    with pytest.raises(ModelLoadError, match="objects other than tensors.*state_dict"):
        load_classifier(path, resnet_card("state_dict"))


def test_pickled_custom_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "custom.pt"
    torch.save({"fc.weight": torch.zeros(2), "extra": Opaque()}, path)
    with pytest.raises(ModelLoadError, match="other than tensors.*Opaque"):
        load_classifier(path, resnet_card("state_dict"))


def test_non_tensor_value_is_refused(tmp_path: Path, resnet: torch.nn.Module) -> None:
    path = tmp_path / "mixed.pth"
    torch.save({**resnet.state_dict(), "epoch": 3}, path)
    with pytest.raises(ModelLoadError, match=r"values other than tensors under \['epoch'\]"):
        load_classifier(path, resnet_card("state_dict"))


def test_num_classes_mismatch_names_the_head(tmp_path: Path) -> None:
    weights = build_arch(ModelCard.from_dict(resnet_card("safetensors", num_classes=20,
                                                         class_names=[str(i) for i in range(20)])))
    path = tmp_path / "r20.safetensors"
    save_file(weights.state_dict(), str(path))
    with pytest.raises(ModelCardError, match="num_classes in the card is 10 but the checkpoint's "
                                             "fc.weight has 20 rows"):
        load_classifier(path, resnet_card("safetensors"))


def test_wrong_arch_names_the_keys(tmp_path: Path, tiny: TinyCNN) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file(tiny.state_dict(), str(path))
    expected = r"missing keys \['conv1.weight'.*unexpected keys .*'bn.weight'.*Check 'arch'"
    with pytest.raises(ModelLoadError, match=expected):
        load_classifier(path, resnet_card("safetensors"))


def test_wrong_output_size(tmp_path: Path) -> None:
    path = save_torchscript(TinyCNN(num_classes=1000), tmp_path / "wide.pt")
    with pytest.raises(ModelOutputError, match=r"shape \(2, 1000\), expected \(2, 10\)"):
        load_classifier(path, card_dict("torchscript"))


def test_nan_output(tmp_path: Path) -> None:
    path = save_torchscript(NaNModel(), tmp_path / "nan.pt")
    with pytest.raises(ModelOutputError, match="NaN"):
        load_classifier(path, card_dict("torchscript"))


def test_model_that_raises_on_probe_hints_input_size(tmp_path: Path, tiny: TinyCNN) -> None:
    path = save_torchscript(tiny, tmp_path / "tiny.pt")
    card = card_dict("torchscript", input_size=[1, 8, 8], mean=[0.5], std=[0.5])
    with pytest.raises(ModelCardError, match="probe batch of shape .*input_size"):
        load_classifier(path, card)


def test_corrupt_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(os.urandom(512))
    with pytest.raises(ModelLoadError, match="not a readable TorchScript archive"):
        load_classifier(path, card_dict("torchscript"))


def test_corrupt_export(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt2"
    path.write_bytes(os.urandom(512))
    with pytest.raises(ModelLoadError, match="not a readable torch.export program"):
        load_classifier(path, card_dict("export"))


def test_torchscript_declared_as_state_dict_gets_a_hint(tmp_path: Path, tiny: TinyCNN) -> None:
    path = save_torchscript(tiny, tmp_path / "tiny.pt")
    with pytest.raises(ModelLoadError, match='looks like a torchscript checkpoint.*"format": "torchscript"'):
        load_classifier(path, resnet_card("state_dict"))


def test_export_declared_as_torchscript_gets_a_hint(export_files: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="looks like a export checkpoint"):
        load_classifier(export_files["static"], card_dict("torchscript"))


def test_safetensors_declared_as_state_dict_gets_a_hint(tmp_path: Path, resnet: torch.nn.Module) -> None:
    path = tmp_path / "w.pth"
    save_file(resnet.state_dict(), str(path))
    with pytest.raises(ModelLoadError, match="looks like a safetensors checkpoint"):
        load_classifier(path, resnet_card("state_dict"))
