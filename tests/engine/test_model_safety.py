"""Hostile checkpoints and cards: refused with a clear error, and their side effect never happens.

Each hostile .pt2 is first shown to work against plain ``torch.export.load`` (in a subprocess:
the marker file appears), then our loader must refuse it with the marker still absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from tests.engine.hostile_models import (
    DeflatedZeros,
    bomb_zip,
    pt2_with_expression,
    pt2_with_guard,
    pt2_with_opaque_constant,
    pt2_with_pickled_sample_inputs,
    pt2_with_pickled_weight,
    rewrite_zip,
    root_of,
)
from tests.engine.model_factories import TinyCNN, card_dict, save_export, save_torchscript
from worker.engine.card import MAX_NUM_CLASSES, ModelCard, batch_bytes, require_batch_fits
from worker.engine.errors import ModelCardError, ModelLoadError
from worker.engine.jsonfile import JSONBoundsError, json_depth, loads_bounded, read_json
from worker.engine.models import load_classifier
from worker.engine.models.archive import ENV_MAX_EXPANDED_MB, ZipLimits, check_zip_archive
from worker.engine.models.export_archive import check_export_archive
from worker.engine.models.operators import refusal

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "worker" / "engine" / "assets" / "demo"
DEMO_PT2 = DEMO / "digits_cnn_export.pt2"
DEMO_PT2_CARD = json.loads((DEMO / "digits_cnn_export.card.json").read_text())
DEMO_TS = DEMO / "digits_cnn.pt"
DEMO_TS_CARD = json.loads((DEMO / "digits_cnn.card.json").read_text())
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run_python(code: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=ENV, cwd=str(ROOT))


# Peak RSS of the child itself. ru_maxrss is not used: Linux carries the parent's high-water mark
# (pytest's, with torch loaded) across fork and exec into the child's ru_maxrss.
PEAK_RSS = (
    "def peak_kb():\n"
    "    with open('/proc/self/status') as status:\n"
    "        return next(int(line.split()[1]) for line in status if line.startswith('VmHWM:'))\n")


def plain_torch_loads(path: Path) -> None:
    """What the service did before: torch.export.load and module(), in a throwaway process."""
    run_python(f"import torch\nwith open({str(path)!r}, 'rb') as f:\n    torch.export.load(f).module()")


# -- torch.export archives ----------------------------------------------------------------------

def _guard(marker: Path) -> str:
    # The comment hides the rest from torch's ast check of the message; the line breaks end the assert
    # in the generated source, so open() runs at module level when module() exec's it.
    return f"1 #\n)\nopen({str(marker)!r}, 'w')\ndef _y(*a):\n  (1"


HOSTILE_PT2 = {
    "pickled weight": (lambda src, dst, m: pt2_with_pickled_weight(src, dst, m), "use_pickle"),
    "opaque constant": (lambda src, dst, m: pt2_with_opaque_constant(src, dst, m), "opaque_obj_0"),
    "pickled sample inputs": (lambda src, dst, m: pt2_with_pickled_sample_inputs(src, dst, m), "sample inputs"),
    "sympy expression": (lambda src, dst, m: pt2_with_expression(
        src, dst, f"__import__('builtins').open({str(m)!r}, 'w') and Symbol('s77', positive=True, integer=True)"),
        "symbolic expression"),
    "guard code": (lambda src, dst, m: pt2_with_guard(src, dst, _guard(m)), "guard"),
}


def _loader_reads_opaque_objects() -> bool:
    import inspect

    from torch.export.pt2_archive import _package

    return "opaque_obj" in inspect.getsource(_package)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(HOSTILE_PT2))
def test_hostile_pt2_is_refused_and_runs_nothing(tmp_path: Path, case: str) -> None:
    build, reason = HOSTILE_PT2[case]
    proof = tmp_path / "proof"
    plain_torch_loads(build(DEMO_PT2, tmp_path / "proof.pt2", proof))
    if case == "opaque constant" and not _loader_reads_opaque_objects():
        pass  # an older torch (the floor, 2.11) has no opaque constants: nothing to prove, refusal still checked
    else:
        assert proof.exists(), f"the {case} archive is not hostile to plain torch.export.load: the test proves nothing"

    marker = tmp_path / "marker"
    hostile = build(DEMO_PT2, tmp_path / "hostile.pt2", marker)
    with pytest.raises(ModelLoadError, match=reason) as info:
        load_classifier(hostile, DEMO_PT2_CARD)
    assert not marker.exists()
    assert str(hostile) not in info.value.message and "hostile.pt2" in info.value.message  # name, not path


@pytest.mark.parametrize(("member", "reason"), [
    ("data/aotinductor/model/model.so", "AOTInductor"),
    ("data/weights/model.pt", "legacy pickled"),
    ("data/constants/custom_obj_0", "custom object"),
    ("data/extra.pkl", "pickle"),
    ("data/executorch/x", "unexpected member"),
])
def test_pt2_members_torch_would_run_are_refused(tmp_path: Path, member: str, reason: str) -> None:
    root = root_of(DEMO_PT2)
    path = tmp_path / "extra.pt2"
    with zipfile.ZipFile(DEMO_PT2) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
        zout.writestr(f"{root}/{member}", b"\0" * 16)
    with pytest.raises(ModelLoadError, match=reason):
        load_classifier(path, DEMO_PT2_CARD)


def test_demo_programs_still_load() -> None:
    for path, card in ((DEMO_PT2, DEMO_PT2_CARD), (DEMO_TS, DEMO_TS_CARD)):
        classifier = load_classifier(path, card)
        assert classifier.logits(torch.rand(3, *classifier.input_size)).shape == (3, 10)


def test_dynamic_export_with_range_constraints_loads(tmp_path: Path) -> None:
    path = save_export(TinyCNN(), tmp_path / "dyn.pt2", dynamic_batch=True, max_batch=8)
    classifier = load_classifier(path, card_dict("export"))
    assert classifier.batch.size <= 8


class EvenBatch(torch.nn.Module):
    """Exports with guards, symbolic sizes and _operator.floordiv in the graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        torch._check(n % 2 == 0)
        return x.reshape(n // 2, -1)[:, :10].repeat(2, 1)


def test_export_with_guards_and_symbolic_sizes_passes_the_archive_check(tmp_path: Path) -> None:
    program = torch.export.export(EvenBatch(), (torch.rand(4, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim.AUTO},))
    path = tmp_path / "even.pt2"
    torch.export.save(program, path)
    with zipfile.ZipFile(path) as z:
        saved = json.loads(z.read(f"{root_of(path)}/models/model.json"))
    assert saved["guards_code"] and any("FloorDiv" in json.dumps(v) for v in saved.values())
    with path.open("rb") as f:
        assert check_export_archive(f, name=path.name).models == ["model"]


# -- operator allow-list ---------------------------------------------------------------------------

class MapsAFile(torch.nn.Module):
    """Maps ``path`` writable and fills its first bytes (TorchScript keeps the call: its result is used)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mapped = torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8)
        mapped.fill_(65)
        return torch.zeros(x.shape[0], 10) + mapped[0].float() * 0


class SetsStateFromAFile(torch.nn.Module):
    """Runs its ``__setstate__`` while torch.jit.load unpickles the archive."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.seen = 0

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return self.path, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        mapped = torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8)
        mapped.fill_(66)
        self.seen = int(mapped.sum())  # used, so TorchScript keeps the calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 10)


def _target(tmp_path: Path) -> tuple[Path, bytes]:
    target = tmp_path / "server-file"
    content = b"do not touch me!" * 4
    target.write_bytes(content)
    return target, content


def test_torchscript_from_file_is_refused_and_the_file_unchanged(tmp_path: Path) -> None:
    target, content = _target(tmp_path)
    scripted = torch.jit.script(MapsAFile(str(target)))
    path = tmp_path / "maps.pt"
    scripted.save(str(path))
    # The same program, run by TorchScript without our check, does overwrite the file:
    torch.jit.load(str(path))(torch.rand(1, 3, 8, 8))
    assert target.read_bytes()[:16] == b"A" * 16
    target.write_bytes(content)

    with pytest.raises(ModelLoadError, match="aten::from_file") as info:
        load_classifier(path, card_dict("torchscript"))
    assert info.value.details["operator"] == "aten::from_file"
    assert target.read_bytes() == content


def test_torchscript_setstate_is_refused_before_it_runs(tmp_path: Path) -> None:
    target, content = _target(tmp_path)
    path = tmp_path / "setstate.pt"
    torch.jit.script(SetsStateFromAFile(str(target))).save(str(path))
    torch.jit.load(str(path))  # without our check, loading alone overwrites the file
    assert target.read_bytes()[:16] == b"B" * 16
    target.write_bytes(content)
    with pytest.raises(ModelLoadError, match="__setstate__"):
        load_classifier(path, card_dict("torchscript"))
    assert target.read_bytes() == content


class Prints(TinyCNN):
    """Its forward is clean; an exported method that forward never calls prints."""

    @torch.jit.export
    def debug(self, x: torch.Tensor) -> torch.Tensor:
        print("pwned")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_torchscript_print_is_refused_in_any_method_of_any_submodule(tmp_path: Path) -> None:
    wrapper = torch.nn.Sequential(torch.nn.Identity(), Prints())
    path = save_torchscript(wrapper, tmp_path / "prints.pt")
    with pytest.raises(ModelLoadError, match=r"prim::Print.*in 1\.debug"):
        load_classifier(path, card_dict("torchscript"))


@torch.jit.interface
class ForwardInterface(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pass


class CallsThroughAnInterface(torch.nn.Module):
    """Which module answers an interface call is known only at run time: the check cannot follow it."""

    # The real class, not the string `from __future__ import annotations` would leave to TorchScript.
    __annotations__ = {"head": ForwardInterface}

    def __init__(self) -> None:
        super().__init__()
        self.head = TinyCNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.forward(x)


def test_interface_calls_are_refused(tmp_path: Path) -> None:
    path = save_torchscript(CallsThroughAnInterface(), tmp_path / "iface.pt")
    with pytest.raises(ModelLoadError, match="prim::CallMethod.*interface"):
        load_classifier(path, card_dict("torchscript"))


@torch.library.custom_op("robtest::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_twice.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class CallsCustomOp(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.robtest.twice(self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))))


def test_custom_operator_namespace_is_refused_in_torchscript(tmp_path: Path) -> None:
    path = save_torchscript(CallsCustomOp(), tmp_path / "custom.pt")
    with pytest.raises(ModelLoadError, match="robtest::twice"):
        load_classifier(path, card_dict("torchscript"))


def test_custom_operator_namespace_is_refused_in_export(tmp_path: Path) -> None:
    path = save_export(CallsCustomOp(), tmp_path / "custom.pt2", dynamic_batch=False)
    with pytest.raises(ModelLoadError, match="robtest::twice") as info:
        load_classifier(path, card_dict("export"))
    assert info.value.details["operator"] == "robtest::twice"


def test_operator_list() -> None:
    assert refusal("aten::conv2d") is None and refusal("prim::If") is None
    for name in ("aten::from_file", "aten::save", "prim::Print", "prim::fork", "aten::wait"):
        assert name in (refusal(name) or ""), name
    assert refusal("aten::warn") is None  # scripted torchvision ViTs warn; in the sandbox it reaches only its stderr
    assert "namespaces" in (refusal("c10d::send") or "")


# -- zip bombs --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zeros() -> DeflatedZeros:
    return DeflatedZeros()  # 1 GiB of zeros, about 1 MB deflated: ~5 s, once


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory, zeros: DeflatedZeros) -> dict[str, tuple[Path, dict]]:
    """A 1 GiB member inside a real state dict, TorchScript archive and torch.export program."""
    root = tmp_path_factory.mktemp("bombs")
    tiny = TinyCNN()
    state = root / "state.pt"
    torch.save(tiny.state_dict(), state)
    script = save_torchscript(tiny, root / "script.pt")
    out = {}
    for kind, src, member, card in (
            ("state_dict", state, f"{root_of(state)}/data/0",
             {"format": "state_dict", "arch": "resnet18", "num_classes": 10, "input_size": [3, 32, 32]}),
            ("torchscript", script, f"{root_of(script)}/data/0", card_dict("torchscript")),
            ("export", DEMO_PT2, f"{root_of(DEMO_PT2)}/data/weights/weight_0", DEMO_PT2_CARD)):
        out[kind] = (bomb_zip(src, root / f"bomb-{kind}{src.suffix}", member, zeros), card)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["state_dict", "torchscript", "export"])
def test_zip_bomb_is_refused_fast_with_small_memory(bombs: dict[str, tuple[Path, dict]], kind: str) -> None:
    path, card = bombs[kind]
    assert path.stat().st_size < 2 * 1024 * 1024
    with zipfile.ZipFile(path) as z:  # a real bomb: the member inflates to zeros
        member = max(z.infolist(), key=lambda i: i.file_size)
        assert member.file_size == 1 << 30
        with z.open(member) as f:
            assert f.read(1 << 20) == bytes(1 << 20)
    # In a fresh process: peak RSS before the load (torch imported) and after it.
    code = (
        PEAK_RSS +
        "import time, json\n"
        "from worker.engine.models import load_classifier\n"
        "from worker.engine.errors import ModelLoadError\n"
        "import torch\n"
        "before = peak_kb()\n"
        "t = time.perf_counter()\n"
        "try:\n"
        f"    load_classifier({str(path)!r}, json.loads({json.dumps(json.dumps(card))}))\n"
        "    message = None\n"
        "except ModelLoadError as exc:\n"
        "    message = exc.message\n"
        "print(json.dumps({'message': message, 'seconds': time.perf_counter() - t, 'before_kb': before,\n"
        "                  'after_kb': peak_kb()}))\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["message"] is not None and "zip bomb" in got["message"], got
    assert got["seconds"] < 5, got
    # Decompressing would add 1 GiB; the check adds next to nothing on top of torch's own import.
    assert got["after_kb"] - got["before_kb"] < 100 * 1024, got
    assert got["after_kb"] < 1536 * 1024, got


@pytest.mark.slow
def test_zip_bomb_check_without_torch_stays_small(bombs: dict[str, tuple[Path, dict]]) -> None:
    """The API's view: the archive check alone, in a process that cannot import torch."""
    paths = [str(p) for p, _ in bombs.values()]
    code = (BLOCK_TORCH + PEAK_RSS +
            "import json\n"
            "from worker.engine.models.archive import check_zip_archive\n"
            "from worker.engine.errors import ModelLoadError\n"
            "refused = 0\n"
            f"for p in {paths!r}:\n"
            "    try:\n"
            "        check_zip_archive(p)\n"
            "    except ModelLoadError:\n"
            "        refused += 1\n"
            "print(json.dumps({'refused': refused, 'peak_kb': peak_kb()}))\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["refused"] == 3 and got["peak_kb"] < 600 * 1024, got


def test_zip_bomb_nested_in_the_sample_inputs_is_refused(tmp_path: Path, zeros: DeflatedZeros) -> None:
    """The sample inputs are a torch.save zip stored inside the .pt2: the outer ratio is 1:1."""
    root = root_of(DEMO_PT2)
    member = f"{root}/data/sample_inputs/model.pt"
    with zipfile.ZipFile(DEMO_PT2) as z:
        inner = tmp_path / "inputs.pt"
        inner.write_bytes(z.read(member))
    bomb = bomb_zip(inner, tmp_path / "inputs-bomb.pt", f"{root_of(inner)}/data/0", zeros)
    path = rewrite_zip(DEMO_PT2, tmp_path / "nested.pt2",
                       lambda name, data: bomb.read_bytes() if name == member else data)
    with pytest.raises(ModelLoadError, match=r"sample_inputs/model\.pt.*zip bomb"):
        load_classifier(path, DEMO_PT2_CARD)


def test_zip_total_size_bound_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(600_000)}, path)  # 2.4 MB, stored
    assert check_zip_archive(path)
    monkeypatch.setenv(ENV_MAX_EXPANDED_MB, "1")
    with pytest.raises(ModelLoadError, match=ENV_MAX_EXPANDED_MB):
        check_zip_archive(path)
    monkeypatch.setenv(ENV_MAX_EXPANDED_MB, "lots")
    with pytest.raises(ValueError, match=ENV_MAX_EXPANDED_MB):
        ZipLimits.from_env()


def test_zip_member_ratio_bound(tmp_path: Path) -> None:
    path = tmp_path / "zeros.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/data/0", bytes(4 << 20))  # 4 MiB of zeros: about 1000:1
        z.writestr("a/small", bytes(1000))  # small members may compress well
    with pytest.raises(ModelLoadError, match="ratio"):
        check_zip_archive(path)
    assert check_zip_archive(path, limits=ZipLimits(max_ratio=2000))


def test_duplicate_zip_members_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a/data/0", b"1")
        with pytest.warns(UserWarning, match="Duplicate"):
            z.writestr("a/data/0", b"2")
    with pytest.raises(ModelLoadError, match="two zip members"):
        check_zip_archive(path)


# -- cards and JSON ---------------------------------------------------------------------------------

def test_deep_json_is_refused_without_recursion(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(JSONBoundsError, match="100000 levels"):
        loads_bounded(deep)
    path = tmp_path / "deep.card.json"
    path.write_text('{"format": "torchscript", "name": ' + deep + "}")
    with pytest.raises(ModelCardError, match="nested"):
        ModelCard.from_file(path)


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth('{"a": "[[[[{{{{", "b": [["\\"[["]]}') == 3
    assert loads_bounded('{"a": "[[[[[[[[[["}', max_depth=1) == {"a": "[[[[[[[[[["}
    with pytest.raises(JSONBoundsError, match="bytes"):
        loads_bounded("[" + "1," * 100 + "1]", max_bytes=100)


def test_card_with_a_huge_integer_is_a_card_error(tmp_path: Path) -> None:
    path = tmp_path / "digits.card.json"
    path.write_text('{"format": "torchscript", "num_classes": ' + "9" * 5000 + "}")
    with pytest.raises(ModelCardError, match="not readable JSON"):
        ModelCard.from_file(path)


def test_oversized_card_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.card.json"
    path.write_text(json.dumps({"name": "x" * 2000}))
    with pytest.raises(ModelCardError, match="above the 1000-byte limit") as info:
        read_json(path, what="model card", error=ModelCardError, max_bytes=1000)
    assert str(tmp_path) not in info.value.message


def test_huge_num_classes_is_refused_before_anything_is_built() -> None:
    start = time.perf_counter()
    for n in (10**12, MAX_NUM_CLASSES + 1):
        with pytest.raises(ModelCardError, match="num_classes.*limit"):
            ModelCard.from_dict(card_dict("torchscript", num_classes=n))
    with pytest.raises(ModelCardError, match="class_names"):
        ModelCard.from_dict(card_dict("torchscript", num_classes=10**5, class_names=["a"]))
    assert time.perf_counter() - start < 1.0
    assert len(ModelCard.from_dict(card_dict("torchscript", num_classes=MAX_NUM_CLASSES)).class_names) == 10**5


@pytest.mark.parametrize(("overrides", "match"), [
    ({"input_size": [1, 100_000, 100_000]}, "side above the limit of 4096"),
    ({"input_size": [3, 4096, 4096]}, "values per input"),
    ({"input_size": [3, 8, True]}, "positive integers"),
    ({"class_names": ["a\0b"] + [str(i) for i in range(1, 10)]}, "without NUL"),
    ({"class_names": ["\ud800"] + [str(i) for i in range(1, 10)]}, "without NUL"),
    ({"class_names": ["x" * 1001] + [str(i) for i in range(1, 10)]}, "at most 1000"),
    ({"hierarchy": {str(i): "g" for i in range(11)}}, "hierarchy"),
    ({"name": "a\0"}, "'name'"),
    ({"mean": [float("nan"), 0.0, 0.0]}, "finite"),
    ({"preprocess": {"resize": 10**9}}, "at most 4096"),
])
def test_card_bounds(overrides: dict, match: str) -> None:
    with pytest.raises(ModelCardError, match=match):
        ModelCard.from_dict(card_dict("torchscript", **overrides))


GENERATOR_CARD = json.loads((DEMO / "digits_generator.card.json").read_text())


@pytest.mark.parametrize(("overrides", "match"), [
    ({"num_classes": 10**12}, "num_classes must be an integer of at most 100000"),
    ({"class_names": ["x"] * (MAX_NUM_CLASSES + 1)}, "at most 100000 strings"),
    ({"output_size": [3, 100_000, 100_000]}, "above the limits"),
    ({"output_size": [3, 4096, 4096]}, "above the limits"),
    ({"latent_dim": 10**9}, "latent_dim must be an integer from 1 to"),
    ({"layers": ["fc\0"]}, "layers must be"),
    ({"name": "\ud800"}, "name must be"),
])
def test_generator_card_bounds(overrides: dict, match: str) -> None:
    from worker.engine.generators import GeneratorCard, GeneratorError

    assert GeneratorCard.from_dict(GENERATOR_CARD).num_classes == 10
    with pytest.raises(GeneratorError, match=match):
        GeneratorCard.from_dict({**GENERATOR_CARD, **overrides})


def test_batch_memory_is_estimated_before_allocating(tmp_path: Path) -> None:
    assert batch_bytes((3, 224, 224), 8) == 8 * 3 * 224 * 224 * 4
    with pytest.raises(ModelCardError, match="needs 4 MiB"):
        require_batch_fits((1, 1024, 1024), 1, limit_bytes=1 << 20)
    # A card built in code skips from_dict's bounds: the probe still refuses before torch allocates.
    card = ModelCard.from_dict(card_dict("torchscript"))
    absurd = ModelCard(**{**card.__dict__, "input_size": (3, 100_000, 100_000)})
    path = save_torchscript(TinyCNN(), tmp_path / "tiny.pt")
    with pytest.raises(ModelCardError, match="probe batch .* needs"):
        load_classifier(path, absurd)


# -- import without torch ------------------------------------------------------------------------

BLOCK_TORCH = (
    "import sys\n"
    "class _NoTorch:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this process')\n"
    "sys.meta_path.insert(0, _NoTorch())\n")


def test_card_json_and_archive_checks_import_without_torch() -> None:
    code = (BLOCK_TORCH +
            "from worker.engine.card import ModelCard\n"
            "from worker.engine.jsonfile import loads_bounded\n"
            "from worker.engine.models.archive import check_zip_archive\n"
            f"ModelCard.from_file({str(DEMO / 'digits_cnn_export.card.json')!r})\n"
            f"print(len(check_zip_archive({str(DEMO_PT2)!r})), loads_bounded('[1]'))\n"
            "assert 'torch' not in sys.modules\n")
    result = run_python(code, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(len(zipfile.ZipFile(DEMO_PT2).namelist())), "[1]"]


# -- messages --------------------------------------------------------------------------------------

def test_load_errors_name_files_not_server_paths(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"PK\3\4 not really a zip")
    for path, card in ((tmp_path / "missing.pt", card_dict("torchscript")), (junk, card_dict("export"))):
        with pytest.raises(ModelLoadError) as info:
            load_classifier(path, card)
        assert path.name in info.value.message and str(tmp_path) not in info.value.message
