"""An ONNX model with its external data files in one zip: the upload's own folder.

A zip holds one ``.onnx`` member and the data files its tensors name (``model.onnx`` beside
``model.onnx.data``, as ``torch.onnx.export`` writes them), at the top level or in one folder. The
model's folder inside the zip is the upload's folder: a tensor's ``location`` names a member there.

Checked from the central directory, before anything is decompressed: the bounds of
:func:`~.archive.check_zip_archive` (member count, declared sizes, compression ratio, duplicates,
encryption), and each member's name and type: a relative name of plain components (no ``..``, no
absolute path, no backslash, no control character), at most one folder deep, and a regular file or a
folder (a member whose Unix mode says symlink, device, FIFO or socket is refused).

The service also writes one (:func:`write_bundle`) from a checkpoint and its data file sent as two
multipart parts, so that every stored model stays one content-addressed file.

Pure standard library (no onnx, no torch): the API process checks an upload with it.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from ..errors import ModelLoadError
from .archive import check_zip_archive

MODEL_SUFFIX = ".onnx"
#: longest member name (bytes of UTF-8); a file name on Linux is at most 255 bytes
MAX_NAME_BYTES = 255
#: members of a bundle: a model and its data files (torch writes one; onnx may write one per tensor)
MAX_BUNDLE_MEMBERS = 10_000
_REFUSED_TYPES = {stat.S_IFLNK: "a symbolic link", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                  stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}
#: the timestamp of members the service writes, so that the same two parts give the same bundle
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class Readable(Protocol):
    """What a member is copied from: a binary stream."""

    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Bundle:
    """A checked bundle.

    Args:
        model: the ``.onnx`` member's name.
        folder: the folder of that member inside the zip (``""`` at the top level, else ``"name/"``).
        files: member name -> declared uncompressed size, for the regular files beside the model.
    """

    model: str
    folder: str
    files: dict[str, int]

    def member(self, location: str) -> str:
        return self.folder + location


def plain_name_problem(name: str) -> str | None:
    """Why ``name`` is not one plain, relative file name, or None when it is."""
    if not name:
        return "it is empty"
    if "\x00" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it has a control character"
    if "/" in name or "\\" in name:
        return "it names a folder (a path separator)"
    if name in (".", ".."):
        return f"it is {name!r}"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    return None


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    parts = name.rstrip("/").split("/")
    if len(parts) > 2:
        return "more than one folder deep"
    for part in parts:
        problem = plain_name_problem(part)
        if problem is not None:
            return f"a name whose component {part[:40]!r} is not plain: {problem}"
    kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
    if kind in _REFUSED_TYPES:
        return _REFUSED_TYPES[kind]
    return None


def check_bundle(path: str | Path, *, name: str) -> Bundle:
    """The members of an ONNX bundle, after the checks of this module (nothing is decompressed).

    Raises:
        ModelLoadError: naming the member refused, or the zip bound exceeded.
    """
    members = check_zip_archive(path, name=name)
    if len(members) > MAX_BUNDLE_MEMBERS:
        raise ModelLoadError(f"{name} has {len(members)} members, more than the {MAX_BUNDLE_MEMBERS} "
                             "an ONNX model with its data files may have")
    for info in members:
        problem = _member_problem(info)
        if problem is not None:
            raise ModelLoadError(f"{name}: zip member {info.filename[:200]!r} is {problem}; refused",
                                 member=info.filename[:200])
    models = [m.filename for m in members if not m.is_dir() and m.filename.endswith(MODEL_SUFFIX)]
    if len(models) != 1:
        raise ModelLoadError(f"{name}: an ONNX zip holds exactly one {MODEL_SUFFIX} file and its data files; "
                             f"found {len(models)} {MODEL_SUFFIX} files")
    model = models[0]
    folder = model.rsplit("/", 1)[0] + "/" if "/" in model else ""
    files = {m.filename: m.file_size for m in members
             if not m.is_dir() and m.filename != model and m.filename.startswith(folder)
             and "/" not in m.filename[len(folder):]}
    return Bundle(model, folder, files)


def write_bundle(out: IO[bytes], model: tuple[str, Readable], data: list[tuple[str, Readable]]) -> None:
    """Write a bundle (stored, not compressed) of a model and its data files, each (name, stream).

    Raises:
        ModelLoadError: a name is not a plain file name, or two are the same.
    """
    names = [model[0], *(n for n, _ in data)]
    for member in names:
        problem = plain_name_problem(member)
        if problem is not None:
            raise ModelLoadError(f"file name {member[:80]!r} is refused: {problem}")
    if len(set(names)) != len(names):
        raise ModelLoadError("the checkpoint and its external data file have the same name")
    if not model[0].endswith(MODEL_SUFFIX):
        raise ModelLoadError(f"an ONNX checkpoint with external data must be named *{MODEL_SUFFIX}, "
                             f"not {model[0][:80]!r}")
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for member, stream in (model, *data):
            info = zipfile.ZipInfo(member, date_time=_FIXED_TIME)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.create_system = 3
            with archive.open(info, "w", force_zip64=True) as target:
                shutil.copyfileobj(stream, target, 1 << 20)
