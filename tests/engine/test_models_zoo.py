"""The models people have: timm, Hugging Face transformers, ONNX and every torchvision classifier.

Every model is small, randomly initialised here and never downloaded. Each must give the same
logits as the module it came from, let gradients through (PGD finds adversarials), and fail with
a clear message for an unknown name or weights that do not fit.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import fx, nn

from worker.engine.attacks import make_attack
from worker.engine.card import ArchLibrary, ModelCard, Preprocess
from worker.engine.classifier import Classifier
from worker.engine.errors import ModelCardError, ModelLoadError
from worker.engine.models import load_classifier
from worker.engine.models.operators import check_converted_graph

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")
from safetensors.torch import save_file  # noqa: E402

NUM_CLASSES = 10


def images(n: int, size: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *size, generator=torch.Generator().manual_seed(seed))


def normalised(x: torch.Tensor, card: ModelCard) -> torch.Tensor:
    c = card.channels
    return (x - torch.tensor(card.mean).view(1, c, 1, 1)) / torch.tensor(card.std).view(1, c, 1, 1)


def assert_same_logits(classifier: Classifier, reference: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        want = reference(normalised(x, classifier.card))
        want = getattr(want, "logits", want)
        got = classifier(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def assert_attack_finds_adversarials(classifier: Classifier, x: torch.Tensor) -> None:
    """Gradients reach the input, and PGD (L-inf) flips the model's own predictions on some images."""
    probe = x.clone().requires_grad_(True)
    classifier(probe).logsumexp(dim=1).sum().backward()
    assert probe.grad is not None and probe.grad.abs().sum() > 0
    labels = classifier.logits(x).argmax(dim=1).cpu()
    result = make_attack("pgd", norm="linf", steps=10)(classifier, x, labels, [0.3])
    assert result.success.any(), "PGD found no adversarial: gradients do not flow through the converted model"


# -- timm -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timm_resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=NUM_CLASSES).eval()


def timm_card(fmt: str = "safetensors", **extra: Any) -> dict[str, Any]:
    return {"format": fmt, "arch": "timm:test_resnet", "num_classes": NUM_CLASSES, **extra}


@pytest.mark.parametrize("fmt", ["safetensors", "state_dict"])
def test_timm_resnet_same_logits_and_attackable(tmp_path: Path, timm_resnet: nn.Module, fmt: str) -> None:
    path = tmp_path / "resnet.bin"
    if fmt == "safetensors":
        save_file(timm_resnet.state_dict(), path)
    else:
        torch.save(timm_resnet.state_dict(), path)
    classifier = load_classifier(path, timm_card(fmt, input_size=[3, 32, 32]))
    x = images(6, (3, 32, 32))
    assert_same_logits(classifier, timm_resnet, x)
    assert_attack_finds_adversarials(classifier, x)


def test_timm_preprocessing_from_pretrained_config_and_card_overrides(tmp_path: Path, timm_resnet: nn.Module) -> None:
    path = tmp_path / "resnet.safetensors"
    save_file(timm_resnet.state_dict(), path)
    cfg = timm.models.get_pretrained_cfg("test_resnet").to_dict()
    loaded = load_classifier(path, timm_card())
    library = loaded.card
    assert loaded.describe()["mean"] == list(cfg["mean"])  # the report says what was used
    assert library.input_size == tuple(cfg["input_size"])
    assert library.mean == tuple(cfg["mean"]) and library.std == tuple(cfg["std"])
    side = cfg["input_size"][1]
    assert library.preprocess == Preprocess(resize=int(side / cfg["crop_pct"]), crop=side)
    card = load_classifier(path, timm_card(input_size=[3, 32, 32], mean=[0.1, 0.2, 0.3],
                                           preprocess={"resize": 40})).card
    assert card.input_size == (3, 32, 32) and card.mean == (0.1, 0.2, 0.3)
    assert card.std == tuple(cfg["std"]) and card.preprocess == Preprocess(resize=40)


def test_timm_unknown_name_and_unfit_weights(tmp_path: Path, timm_resnet: nn.Module) -> None:
    path = tmp_path / "resnet.safetensors"
    save_file(timm_resnet.state_dict(), path)
    with pytest.raises(ModelCardError, match=r"'timm:resnet_nope' is not a timm model; close: \["):
        load_classifier(path, timm_card(arch="timm:resnet_nope"))
    with pytest.raises(ModelCardError, match="Invalid pretrained tag"):
        load_classifier(path, timm_card(arch="timm:test_resnet.nope"))
    with pytest.raises(ModelLoadError, match=r"does not fit architecture 'timm:test_efficientnet'"):
        load_classifier(path, timm_card(arch="timm:test_efficientnet", input_size=[3, 32, 32]))


def test_timm_vit_takes_the_card_size(tmp_path: Path) -> None:
    torch.manual_seed(1)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=NUM_CLASSES, img_size=32).eval()
    path = tmp_path / "vit.safetensors"
    save_file(vit.state_dict(), path)
    classifier = load_classifier(path, timm_card(arch="timm:test_vit", input_size=[3, 32, 32]))
    assert_same_logits(classifier, vit, images(3, (3, 32, 32)))


# -- Hugging Face -----------------------------------------------------------------------------------

def vit_config(**extra: Any) -> dict[str, Any]:
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=NUM_CLASSES, **extra)
    config.architectures = ["ViTForImageClassification"]
    return json.loads(config.to_json_string())  # what a config.json file holds (string label keys)


PREPROCESSOR = {"do_normalize": True, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3],
                "do_rescale": True, "rescale_factor": 1 / 255, "do_resize": True, "size": {"height": 32, "width": 32}}


@pytest.fixture(scope="module")
def hf_vit() -> nn.Module:
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(transformers.ViTConfig.from_dict(vit_config())).eval()


def save_pretrained(model: nn.Module, folder: Path) -> Path:
    """The model.safetensors a Hugging Face repository holds (its key names, not the module's)."""
    model.save_pretrained(str(folder / "hub"))
    return folder / "hub" / "model.safetensors"


def hf_card(config: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"format": "safetensors", "arch": "hf", "num_classes": NUM_CLASSES,
            "options": {"config": config, **options}}


def test_hf_vit_same_logits_preprocessor_and_attackable(tmp_path: Path, hf_vit: nn.Module) -> None:
    path = save_pretrained(hf_vit, tmp_path)
    classifier = load_classifier(path, hf_card(vit_config(), preprocessor=PREPROCESSOR))
    assert classifier.card.input_size == (3, 32, 32)
    assert classifier.card.class_names == tuple(str(i) for i in range(NUM_CLASSES))  # LABEL_i: no names
    assert classifier.card.mean == pytest.approx((0.5, 0.4, 0.3))
    assert classifier.card.std == pytest.approx((0.2, 0.25, 0.3))
    x = images(5, (3, 32, 32))
    assert_same_logits(classifier, hf_vit, x)
    assert_attack_finds_adversarials(classifier, x)
    # Without a preprocessor: the config's image size, no normalisation; the card's own values win.
    # The module's own state dict (current key names) as a torch.save file loads too.
    torch.save(hf_vit.state_dict(), tmp_path / "model.pt")
    plain = load_classifier(tmp_path / "model.pt", {**hf_card(vit_config()), "format": "state_dict",
                                                    "mean": [0.5] * 3, "std": [0.5] * 3})
    assert plain.card.input_size == (3, 32, 32) and plain.card.mean == (0.5, 0.5, 0.5)
    assert_same_logits(plain, hf_vit, x)


@pytest.mark.parametrize("change, error, message", [
    ({"model_type": "bert"}, ModelCardError, "'bert' is not an image classifier"),
    ({"auto_map": {"AutoModelForImageClassification": "evil.Model"}}, ModelCardError, "remote code"),
    ({"architectures": ["ViTModel"]}, ModelCardError, "not an image classification class"),
    ({"hidden_size": 256, "intermediate_size": 1024}, ModelLoadError, "the weights do not fit the config"),
    ({"num_hidden_layers": 1}, ModelLoadError, r"options.config describes: unexpected keys \['vit\.\w+\.1\."),
])
def test_hf_config_refusals(tmp_path: Path, hf_vit: nn.Module, change: dict[str, Any], error: type[Exception],
                            message: str) -> None:
    path = save_pretrained(hf_vit, tmp_path)
    with pytest.raises(error, match=message):
        load_classifier(path, hf_card({**vit_config(), **change}))


def test_hf_class_names_from_id2label_unless_the_card_names_them(tmp_path: Path, hf_vit: nn.Module) -> None:
    path = save_pretrained(hf_vit, tmp_path)
    named = {**vit_config(), "id2label": {str(i): f"kind {i}" for i in range(NUM_CLASSES)}}
    assert load_classifier(path, hf_card(named)).card.class_names[:2] == ("kind 0", "kind 1")
    card = {**hf_card(named), "class_names": list("abcdefghij")}
    assert load_classifier(path, card).card.class_names[:2] == ("a", "b")
    duplicated = {**vit_config(), "id2label": {str(i): "same" for i in range(NUM_CLASSES)}}
    with pytest.raises(ModelCardError, match="'class_names' must be unique"):
        load_classifier(path, hf_card(duplicated))


def test_hf_label_count_must_match_the_card(tmp_path: Path, hf_vit: nn.Module) -> None:
    path = save_pretrained(hf_vit, tmp_path)
    with pytest.raises(ModelCardError, match="num_classes in the card is 12 but options.config has 10 labels"):
        load_classifier(path, {**hf_card(vit_config()), "num_classes": 12})
    config = {k: v for k, v in vit_config().items() if k not in ("id2label", "label2id")}
    with pytest.raises(ModelCardError, match="num_classes in the card is 12 but the checkpoint's classifier.weight"):
        load_classifier(path, {**hf_card(config), "num_classes": 12})


def test_hf_card_needs_a_config_and_options_are_for_hf() -> None:
    with pytest.raises(ModelCardError, match="options.config"):
        ModelCard.from_dict({"format": "safetensors", "arch": "hf", "num_classes": 3})
    with pytest.raises(ModelCardError, match="do not apply to arch 'torchvision'"):
        ModelCard.from_dict({"format": "safetensors", "arch": "resnet18", "num_classes": 3,
                             "input_size": [3, 32, 32], "options": {"config": {}}})
    card = ModelCard.from_dict(hf_card({"model_type": "vit"}))
    assert card.library is ArchLibrary.HF and "input_size" in card.unset
    assert ModelCard.from_dict(card.to_dict()) == card  # a stored card reads back the same


# -- ONNX -------------------------------------------------------------------------------------------

class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16, NUM_CLASSES)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv1(x)))
        z = torch.relu(self.conv2(y)) + y
        return self.fc(torch.cat([z.mean(dim=(2, 3)), nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)], 1))


def export_onnx(model: nn.Module, path: Path, *, dynamic: bool = True) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the legacy exporter at opset 17, which people still use (the dynamo exporter's files: test_onnx_opsets.py)
        torch.onnx.export(model, (torch.rand(2, 3, 16, 16),), str(path), input_names=["x"], dynamo=False,
                          opset_version=17, dynamic_axes={"x": {0: "batch"}} if dynamic else None)
    return path


ONNX_CARD = {"format": "onnx", "num_classes": NUM_CLASSES, "input_size": [3, 16, 16],
             "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(SmallCNN(), tmp_path_factory.mktemp("onnx") / "cnn.onnx")


def test_onnx_same_logits_and_attackable(onnx_file: Path) -> None:
    classifier = load_classifier(onnx_file, ONNX_CARD)
    assert classifier.describe()["format"] == "onnx"
    x = images(7, (3, 16, 16))
    assert_same_logits(classifier, SmallCNN(), x)
    assert_attack_finds_adversarials(classifier, x)


def test_onnx_static_batch_is_chunked(tmp_path: Path) -> None:
    classifier = load_classifier(export_onnx(SmallCNN(), tmp_path / "fixed.onnx", dynamic=False), ONNX_CARD)
    assert classifier.fixed_batch == 2
    assert_same_logits(classifier, SmallCNN(), images(5, (3, 16, 16)))


def test_onnx_card_input_size_must_match(onnx_file: Path) -> None:
    with pytest.raises(ModelCardError, match=r"takes H=16 but the model card 'input_size' is \[3, 24, 16\]"):
        load_classifier(onnx_file, {**ONNX_CARD, "input_size": [3, 24, 16]})


def test_onnx_external_data_beside_the_file_is_read(tmp_path: Path, onnx_file: Path) -> None:
    """Weights re-saved to a data file beside the graph load as before (the rules: test_onnx_external.py)."""
    model = onnx.load(str(onnx_file))
    path = tmp_path / "external.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    assert_same_logits(load_classifier(path, ONNX_CARD), SmallCNN(), images(3, (3, 16, 16)))


def test_onnx_custom_domain_and_local_functions_are_refused(tmp_path: Path, onnx_file: Path) -> None:
    model = onnx.load(str(onnx_file))
    model.graph.node[0].domain = "com.example"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="'com.example' is not allowed"):
        load_classifier(path, ONNX_CARD)
    model = onnx.load(str(onnx_file))
    model.functions.append(onnx.helper.make_function("", "Mine", ["a"], ["b"], [
        onnx.helper.make_node("Relu", ["a"], ["b"])], [onnx.helper.make_opsetid("", 17)]))
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="defines 1 local functions"):
        load_classifier(path, ONNX_CARD)


def test_onnx_bounds_and_garbage(tmp_path: Path, onnx_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.engine.models import onnx_models

    monkeypatch.setattr(onnx_models, "MAX_ONNX_NODES", 3)
    with pytest.raises(ModelLoadError, match="more than 3 nodes"):
        load_classifier(onnx_file, ONNX_CARD)
    monkeypatch.setattr(onnx_models, "MAX_ONNX_BYTES", 100)
    with pytest.raises(ModelLoadError, match="above the 100-byte limit"):
        load_classifier(onnx_file, ONNX_CARD)
    monkeypatch.undo()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="not a readable ONNX file"):
        load_classifier(garbage, ONNX_CARD)


def test_onnx_unconvertible_operator_is_a_clear_error(tmp_path: Path, onnx_file: Path) -> None:
    model = onnx.load(str(onnx_file))
    node = model.graph.node[0]
    node.op_type = "Hardmax"  # a standard operator no route converts
    del node.attribute[:]
    del node.input[1:]
    path = tmp_path / "hardmax.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="Hardmax.*no exact torch conversion"):
        load_classifier(path, ONNX_CARD)


class _Outsider(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_converted_graph_check_refuses_foreign_modules_and_methods() -> None:
    root = nn.Module()
    root.add_module("ok", nn.ReLU())
    root.add_module("outsider", _Outsider())
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_module("outsider", (graph.call_module("ok", (x,)),)))
    prefixes = ("torch.nn.modules.", "onnx2torch.node_converters.")
    with pytest.raises(ModelLoadError, match="_Outsider, not a torch or converter operator module"):
        check_converted_graph(fx.GraphModule(root, graph), label="m.onnx", module_prefixes=prefixes)
    graph = fx.Graph()
    graph.output(graph.call_method("cpu", (graph.placeholder("x"),)))
    with pytest.raises(ModelLoadError, match="'call_method' node"):
        check_converted_graph(fx.GraphModule(root, graph), label="m.onnx", module_prefixes=prefixes)
    graph = fx.Graph()
    graph.output(graph.call_function(torch.ops.aten.save.default, (graph.placeholder("x"), "f")))
    with pytest.raises(ModelLoadError, match="aten::save"):
        check_converted_graph(fx.GraphModule(root, graph), label="m.onnx", module_prefixes=prefixes)


# -- torchvision: every classification model -------------------------------------------------------

@pytest.mark.parametrize("arch", ["squeezenet1_1", "torchvision:shufflenet_v2_x0_5"])
def test_torchvision_models_beyond_the_old_list(tmp_path: Path, arch: str) -> None:
    import torchvision

    name = arch.split(":")[-1]
    assert name in torchvision.models.list_models(module=torchvision.models)
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES).eval()
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), path)
    card = {"format": "safetensors", "arch": arch, "num_classes": NUM_CLASSES, "input_size": [3, 64, 64]}
    assert_same_logits(load_classifier(path, card), model, images(2, (3, 64, 64)))


def test_torchvision_unknown_name_points_to_timm(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(ModelCardError, match=r"'resnet9000' is not a torchvision classification model; "
                                             r"close: \[.*'resnet18'.*'timm:<name>'"):
        load_classifier(path, {"format": "state_dict", "arch": "resnet9000", "num_classes": NUM_CLASSES,
                               "input_size": [3, 32, 32]})
    with pytest.raises(ModelCardError, match="unknown prefix 'keras'"):
        ModelCard.from_dict({"format": "state_dict", "arch": "keras:resnet", "num_classes": 3,
                             "input_size": [3, 32, 32]})


def test_onnx_audit_end_to_end_with_attacks(tmp_path: Path, onnx_file: Path, report_validator, data_root) -> None:
    """The CLI path on a converted model: the attacks suite runs on its gradients and the report validates."""
    from worker.engine.cli import main

    (tmp_path / "cnn.card.json").write_text(json.dumps(ONNX_CARD))
    model = tmp_path / "cnn.onnx"
    model.write_bytes(onnx_file.read_bytes())
    attacks = {"norms": ["linf"], "linf_eps": [0.3], "attacks": ["pgd"], "minimal": "none",
               "targeted": {"enabled": False}}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": str(model), "dataset": {"kind": "builtin", "name": "digits", "n_samples": 12},
                                "suites": {"attacks": attacks}, "gates": ["attacks.robust_accuracy.linf.eps_0p3<=1"]}))
    assert main(["audit", "--quiet", "--config", str(spec), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    report_validator.validate(report)
    assert report["model"]["format"] == "onnx" and report["suites"]["attacks"]["status"] == "completed"
    clean = report["suites"]["clean"]["metrics"]["top1"]["value"]
    robust = report["suites"]["attacks"]["metrics"]["robust_accuracy"]["linf"]["eps_0p3"]["value"]
    assert robust <= clean and (clean == 0 or robust < clean)  # PGD through the converted graph fools some
    codes = {w["code"] for w in report["suites"]["attacks"]["warnings"]}
    assert not codes & {"zero_gradients", "nan_gradients"}, codes  # the sanity flags see real gradients
