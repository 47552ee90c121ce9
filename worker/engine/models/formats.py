"""One loader per checkpoint format, picked from a registry keyed by :class:`ModelFormat`.

Each loader returns the network (on the CPU or the target device), for a program exported
with a static batch the batch size it accepts, and, where a library filled in what the card
left out (timm's and Hugging Face's preprocessing), the completed card. None of them runs
Python code stored in the file; weight formats build the architecture with the library named
by the card's ``arch`` (torchvision, timm, transformers), whose code is ours to trust.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from ..card import ArchLibrary, ModelCard, ModelFormat
from ..errors import ModelCardError, ModelLoadError
from .archive import check_zip_archive
from .export_archive import ExportArchive, check_export_archive
from .messages import first_sentence
from .operators import check_graph_module, check_torchscript
from .safetensors_file import load_safetensors
from .torchvision_archs import build_arch
from .weights import load_weights, normalise_state_dict, read_torch_state_dict

# What torch.jit / torch.export raise on a file that is not theirs (zipfile's for non-zips).
_READ_ERRORS = (RuntimeError, ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile)


@dataclass
class Loaded:
    """A network read from a checkpoint.

    Args:
        model: the network.
        fixed_batch: the only batch size it accepts, or None when any size works.
        max_batch: the largest batch it accepts (a bounded dynamic batch), or None.
        card: the card completed by the library (preprocessing it left out), or None: as given.
    """

    model: nn.Module
    fixed_batch: int | None = None
    max_batch: int | None = None
    card: ModelCard | None = None


class ExportedModule(nn.Module):
    """Holds a torch.export module, which refuses ``train()``/``eval()``.

    Its mode was fixed when it was exported, so switching modes here only sets the flag.

    Args:
        program: the module of ``ExportedProgram.module()``.
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor) -> Any:
        return self.program(x)

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self


# TorchScript runs a class's __setstate__ while it unpickles the archive, before any check could
# look at the graph; no model we accept needs one.
# Any mention of the name is refused, not only "def __setstate__": line continuations could split the def.
_SETSTATE = re.compile(rb"__setstate__")
_MAX_CODE_MEMBER = 64 * 1024 * 1024


def load_torchscript(path: Path, card: ModelCard, device: torch.device) -> Loaded:
    """A TorchScript archive: code and weights, run by the TorchScript interpreter.

    The zip is bounded first, code that would run while loading (``__setstate__``) is refused,
    and after loading every operator of every method is checked against the allow-list.
    """
    _require_zip(path, "TorchScript archive", card)
    members = check_zip_archive(path, name=path.name)
    _refuse_load_time_code(path, members)
    try:
        with warnings.catch_warnings():
            # Deprecated since torch 2.15 but still supported; users have such files.
            warnings.filterwarnings("ignore", message=".*torch.jit.*", category=FutureWarning)
            model = torch.jit.load(str(path), map_location=device)
    except _READ_ERRORS as exc:
        raise ModelLoadError(f"{path.name} is not a readable TorchScript archive: {first_sentence(exc)}"
                             f"{format_hint(path, card.format)}") from None
    check_torchscript(model, label=path.name)
    return Loaded(model)


def _require_zip(path: Path, what: str, card: ModelCard) -> None:
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if not is_zip:
        raise ModelLoadError(f"{path.name} is not a readable {what}: it is not a zip archive"
                             f"{format_hint(path, card.format)}")


def _refuse_load_time_code(path: Path, members: list[zipfile.ZipInfo]) -> None:
    code = [m for m in members if "/code/" in m.filename and m.filename.endswith(".py")]
    with zipfile.ZipFile(path) as archive:
        for info in code:
            if info.file_size > _MAX_CODE_MEMBER:
                raise ModelLoadError(f"{path.name}: TorchScript code member {info.filename!r} is "
                                     f"{info.file_size} bytes, above {_MAX_CODE_MEMBER}")
            if _SETSTATE.search(archive.read(info)):
                raise ModelLoadError(f"{path.name}: TorchScript code {info.filename!r} has a __setstate__, "
                                     "which would run while the archive is loaded; refused",
                                     member=info.filename, operator="__setstate__")


def load_export(path: Path, card: ModelCard, device: torch.device) -> Loaded:
    """A torch.export program (.pt2); a static batch dimension becomes ``fixed_batch``.

    The archive is checked first (no pickled payload, only known members, harmless expressions
    and guards, allowed operators), the pickled sample inputs are read with weights-only
    semantics, and the loaded graph is checked again against the operator allow-list.
    """
    _require_zip(path, "torch.export program", card)
    with path.open("rb") as f:  # one open file for the checks and the load: they see the same bytes
        archive = check_export_archive(f, name=path.name)
        _check_sample_inputs(f, path.name, [f"{archive.root}/{m}" for m in archive.sample_inputs])
        _check_export_schema(archive, path.name)
        f.seek(0)
        try:
            program = torch.export.load(f)
        except (*_READ_ERRORS, TypeError, AttributeError, AssertionError) as exc:  # a newer schema's fields too
            raise ModelLoadError(f"{path.name} is not a readable torch.export program: {first_sentence(exc)}"
                                 f"{_writer_note(archive)}{format_hint(path, card.format)}") from None
    check_graph_module(program.graph_module, label=path.name)
    shape = _input_shape(program, path)
    if len(shape) != 4:
        raise ModelCardError(f"the exported program in {path.name} takes a {len(shape)}-d input, expected "
                             "N x C x H x W images")
    for got, want, name in zip(shape[1:], card.input_size, "CHW"):
        if isinstance(got, int) and got != want:
            raise ModelCardError(f"the exported program in {path.name} takes input (N, "
                                 f"{', '.join(_dim(d) for d in shape[1:])}) but the model card "
                                 f"'input_size' is {list(card.input_size)} ({name} differs)")
    batch = shape[0]
    module = ExportedModule(program.module()).to(device)
    if isinstance(batch, int):
        if batch < 1:
            raise ModelLoadError(f"the exported program in {path.name} has a batch size of {batch}")
        return Loaded(module, fixed_batch=batch)
    return Loaded(module, max_batch=_upper_bound(program, batch))


def _our_export_schema() -> tuple[int, int]:
    from torch._export.serde.schema import SCHEMA_VERSION

    return int(SCHEMA_VERSION[0]), int(SCHEMA_VERSION[1])


def _writer_note(archive: ExportArchive) -> str:
    """Which torch wrote the program against which torch reads it, when the writer's schema is newer:
    a program exported by a newer torch may use what this one cannot read (torch 2.5 could not open
    2.15's archives at all)."""
    ours = _our_export_schema()
    if archive.schema is None or archive.schema <= ours:
        return ""
    return (f" (it was exported by torch {archive.torch_version or '?'}, export schema "
            f"{archive.schema[0]}.{archive.schema[1]}; this worker runs torch {torch.__version__}, schema "
            f"{ours[0]}.{ours[1]}: export it with torch {torch.__version__.split('+')[0]} or older, "
            "or run the worker on a newer torch)")


def _check_export_schema(archive: ExportArchive, name: str) -> None:
    """torch.export reads only its own schema major version; say so before torch does, with both versions."""
    ours = _our_export_schema()
    if archive.schema is not None and archive.schema[0] != ours[0]:
        release = torch.__version__.split("+")[0]
        advice = f"torch {release}" if archive.schema[0] < ours[0] else f"torch {release} or older"
        raise ModelLoadError(
            f"{name} was exported by torch {archive.torch_version or '?'} (export schema "
            f"{archive.schema[0]}.{archive.schema[1]}); this worker runs torch {torch.__version__}, which reads "
            f"export schema {ours[0]}.x only: export it again with {advice}")


def _check_sample_inputs(f: IO[bytes], name: str, members: list[str]) -> None:
    """torch reads these with weights_only=True and, when that fails, again with a full unpickler:
    a member that fails here would take the unsafe path, so it is refused."""
    with zipfile.ZipFile(f) as archive:
        for member in members:
            raw = io.BytesIO(archive.read(member))  # bounded by the archive check
            if zipfile.is_zipfile(raw):  # a torch.save zip inside the archive: bounded in its turn
                check_zip_archive(raw, name=f"{name} ({member.split('/', 1)[-1]})")
            raw.seek(0)
            try:
                torch.load(raw, map_location="cpu", weights_only=True)
            # Any failure at all would send torch down its weights_only=False fallback.
            except Exception as exc:  # noqa: BLE001
                raise ModelLoadError(f"{name}: sample inputs {member.split('/', 1)[-1]!r} are not plain tensors "
                                     f"({first_sentence(exc)[:160]}); torch would unpickle them unsafely; "
                                     "refused", member=member) from None


def build_for_card(card: ModelCard, weights: dict[str, torch.Tensor], path: Path) -> tuple[nn.Module, ModelCard]:
    """(network with the weights loaded, completed card) for the card's ``arch``."""
    library = card.library
    if library is ArchLibrary.HF:
        from .hf_models import build_hf  # transformers places the weights itself (it renames old keys)

        return build_hf(card, weights, path)
    if library is ArchLibrary.TIMM:
        from .timm_models import build_timm

        model, filled = build_timm(card)
    else:
        model, filled = build_arch(card), card
    load_weights(model, weights, filled, path)
    return model, filled


def _arch_weights_loader(read: Callable[[Path], Any], what: str) -> Callable[[Path, ModelCard, torch.device], Loaded]:
    """A loader for weights of the architecture named in the card (torchvision, timm or Hugging Face)."""

    def load(path: Path, card: ModelCard, device: torch.device) -> Loaded:
        if zipfile.is_zipfile(path):  # bounded before anything is built or decompressed
            check_zip_archive(path, name=path.name)
        if card.library is ArchLibrary.TORCHVISION:
            build_arch(card)  # an unknown name is refused before the file is read
        try:
            raw = read(path)
        except ModelLoadError as exc:
            raise ModelLoadError(exc.message + format_hint(path, card.format), **exc.details) from None
        module, filled = build_for_card(card, normalise_state_dict(raw, path), path)
        return Loaded(module, card=filled if filled is not card else None)

    load.__doc__ = f"{what} for an architecture named in the card."
    return load


def read_state_dict(path: Path) -> Any:
    """A zip-format torch.save file is bounded before torch decompresses anything (legacy files are not zips)."""
    if zipfile.is_zipfile(path):
        check_zip_archive(path, name=path.name)
    return read_torch_state_dict(path)


# safetensors is read by the safetensors library (no pickle); a state_dict with weights_only=True.
load_safetensors_weights = _arch_weights_loader(load_safetensors, "safetensors weights")
load_state_dict_weights = _arch_weights_loader(read_state_dict, "A torch.save(model.state_dict()) file")


def load_onnx(path: Path, card: ModelCard, device: torch.device) -> Loaded:
    """An ONNX graph of standard operators, converted to a torch module (see :mod:`.onnx_models`)."""
    from .onnx_models import load_onnx_module  # onnx and onnx2torch are an extra

    module, batch = load_onnx_module(path, card)
    return Loaded(module.to(device), fixed_batch=batch)


LOADERS: dict[ModelFormat, Callable[[Path, ModelCard, torch.device], Loaded]] = {
    ModelFormat.TORCHSCRIPT: load_torchscript,
    ModelFormat.EXPORT: load_export,
    ModelFormat.SAFETENSORS: load_safetensors_weights,
    ModelFormat.STATE_DICT: load_state_dict_weights,
    ModelFormat.ONNX: load_onnx,
}


def sniff_format(path: Path) -> ModelFormat | None:
    """The format a file's content looks like (cheap: zip member names, safetensors header)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                return ModelFormat.TORCHSCRIPT
            if any(n.endswith("/archive_format") for n in names):
                return ModelFormat.EXPORT
            if any(n.endswith("data.pkl") for n in names):
                return ModelFormat.STATE_DICT
            return None
        with path.open("rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except (OSError, zipfile.BadZipFile):
        return None
    if len(head) == 9 and head[8:9] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= size:
        return ModelFormat.SAFETENSORS
    return None


def format_hint(path: Path, declared: ModelFormat) -> str:
    """A sentence to append to a load error when the file looks like another format."""
    seen = sniff_format(path)
    if seen is None or seen == declared:
        return ""
    return (f" (the file looks like a {seen.value} checkpoint, but the model card says "
            f"{declared.value!r}: set \"format\": \"{seen.value}\" in the card?)")


def _input_shape(program: Any, path: Path) -> tuple[Any, ...]:
    names = list(program.graph_signature.user_inputs)
    if len(names) != 1:
        raise ModelLoadError(f"the exported program in {path.name} takes {len(names)} inputs, expected one "
                             "batch of images")
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == names[0]:
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor):
                return tuple(val.shape)
    raise ModelLoadError(f"the exported program in {path.name} does not record its input's shape")


def _upper_bound(program: Any, dim: Any) -> int | None:
    """The ``max`` of a dynamic dimension (``torch.export.Dim(..., max=64)``), if finite."""
    expr = getattr(getattr(dim, "node", None), "expr", None)
    bounds = program.range_constraints.get(expr) if expr is not None else None
    upper: Any = getattr(bounds, "upper", None)
    return int(upper) if getattr(upper, "is_Integer", False) else None


def _dim(d: Any) -> str:
    return str(d) if isinstance(d, int) else "dynamic"
