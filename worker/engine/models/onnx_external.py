"""External data of an ONNX model: tensors whose bytes lie in a data file beside the graph.

A tensor stored outside the ``.onnx`` file (``data_location: EXTERNAL``) names its file with the
``location`` key of ``external_data``, and a byte range with ``offset`` and ``length``. The file is
the client's and the names are the client's, so nothing is read before every reference of the whole
model has been checked:

- every tensor slot is visited (:func:`tensor_slots`): initializers, sparse initializers (values and
  indices), node attributes (``t``, ``tensors``, ``sparse_tensor``, ``sparse_tensors``) in the graph
  and every subgraph (``g``, ``graphs``), and the graphs of ``training_info``;
- ``location`` is one plain relative file name (no folder, no ``..``, not absolute); it must name a
  regular file of the upload's own folder with one link (no symlink, no hard link, no device or FIFO);
- ``offset`` and ``length`` are decimal integers; the range must lie inside the file, have the size
  the tensor's type and shape give, and overlap no other tensor's range (so the bytes read are at
  most the data files' size).

The upload's folder is either a folder on disk (the CLI: the files beside the ``.onnx`` file, opened
relative to the folder with ``O_NOFOLLOW`` and checked again on the open descriptor) or the model's
folder inside a zip (:mod:`.onnx_bundle`). The bytes read become the tensors' ``raw_data``, so the
converted model never opens a file.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import ModelLoadError
from .onnx_bundle import Bundle, plain_name_problem

EXTERNAL = 1  # onnx.TensorProto.EXTERNAL
_KEYS = frozenset({"location", "offset", "length", "checksum"})
#: bytes per element of the fixed-size element types (onnx.TensorProto.DataType); packed 4-bit types apart
_ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
               17: 1, 18: 1, 19: 1, 20: 1, 24: 1}
_HALF_BYTE = frozenset({21, 22, 23})  # UINT4, INT4, FLOAT4E2M1: two elements per byte
_MAX_DIGITS = 20


@dataclass(frozen=True)
class ExternalRef:
    """One tensor's external bytes.

    Args:
        tensor: the TensorProto (its ``raw_data`` is set once read).
        where: the slot, for messages (``initializer 'w'``, ``node 'n' attribute 'value'``, ...).
        location: the data file's name.
        offset: the first byte.
        length: the number of bytes.
    """

    tensor: Any
    where: str
    location: str
    offset: int
    length: int


def _graph_slots(graph: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(slot, TensorProto) of a graph and of every subgraph of its nodes, without recursion."""
    stack = [(graph, where)]
    while stack:
        g, at = stack.pop()
        for t in g.initializer:
            yield f"{at} initializer {t.name!r}", t
        for s in g.sparse_initializer:
            yield f"{at} sparse initializer {s.values.name!r} (values)", s.values
            yield f"{at} sparse initializer {s.values.name!r} (indices)", s.indices
        for node in g.node:
            for attr in node.attribute:
                slot = f"{at} node {(node.name or node.op_type)!r} attribute {attr.name!r}"
                if attr.HasField("t"):
                    yield slot, attr.t
                for t in attr.tensors:
                    yield slot, t
                sparse = ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors)
                for s in sparse:
                    yield f"{slot} (sparse values)", s.values
                    yield f"{slot} (sparse indices)", s.indices
                if attr.HasField("g"):
                    stack.append((attr.g, f"{slot} subgraph"))
                stack.extend((sub, f"{slot} subgraph") for sub in attr.graphs)


def model_graphs(model: Any) -> Iterator[tuple[str, Any]]:
    """(name, GraphProto) of the main graph and of ``training_info``'s graphs (not their subgraphs)."""
    yield "graph", model.graph
    for i, info in enumerate(model.training_info):
        if info.HasField("initialization"):
            yield f"training_info[{i}] initialization", info.initialization
        if info.HasField("algorithm"):
            yield f"training_info[{i}] algorithm", info.algorithm


def tensor_slots(model: Any) -> Iterator[tuple[str, Any]]:
    """(slot, TensorProto) of every tensor the model stores, wherever it is."""
    for name, graph in model_graphs(model):
        yield from _graph_slots(graph, name)


def _integer(raw: str, key: str, where: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _MAX_DIGITS:
        raise ModelLoadError(f"external data of {where}: {key} {raw[:40]!r} is not a non-negative integer")
    return int(raw)


def expected_bytes(tensor: Any, where: str) -> int:
    """The size of a tensor's raw bytes from its element type and shape."""
    if any(d < 0 for d in tensor.dims):
        raise ModelLoadError(f"{where} has a negative dimension {list(tensor.dims)[:8]}")
    count = math.prod(tensor.dims)
    if tensor.data_type in _HALF_BYTE:
        return (count + 1) // 2
    if tensor.data_type not in _ITEM_BYTES:
        raise ModelLoadError(f"{where}: element type {tensor.data_type} cannot be stored as external data here")
    return count * _ITEM_BYTES[tensor.data_type]


def external_refs(model: Any, *, label: str) -> list[ExternalRef]:
    """Every tensor's external reference, each checked on its own (names, keys, integers, size).

    Raises:
        ModelLoadError: naming the tensor's slot and what is wrong.
    """
    refs = []
    for where, tensor in tensor_slots(model):
        if tensor.data_location != EXTERNAL and not len(tensor.external_data):
            continue
        at = f"{label}: {where}"
        if tensor.data_location != EXTERNAL:
            raise ModelLoadError(f"{at} has external_data entries but is not marked EXTERNAL; refused")
        entries: dict[str, str] = {}
        for entry in tensor.external_data:
            if entry.key not in _KEYS or entry.key in entries:
                raise ModelLoadError(f"{at}: external_data key {entry.key[:40]!r} is unknown or repeated")
            entries[entry.key] = entry.value
        location = entries.get("location")
        if location is None:
            raise ModelLoadError(f"{at} is stored externally without a location")
        problem = plain_name_problem(location)
        if problem is not None:  # only its last component is quoted: the rest may name a server folder
            last = location.replace("\\", "/").rsplit("/", 1)[-1][:80]
            raise ModelLoadError(f"{at}: external data location (ending {last!r}) is refused: {problem}; it must "
                                 "be the name of a file beside the model, in the upload's own folder",
                                 location_ends=last)
        if len(tensor.raw_data) or tensor.HasField("segment"):
            raise ModelLoadError(f"{at} is stored externally and inline at once; refused")
        want = expected_bytes(tensor, at)
        offset = _integer(entries.get("offset", "0"), "offset", where)
        length = _integer(entries["length"], "length", where) if "length" in entries else want
        if length != want:
            raise ModelLoadError(f"{at}: external data length {length} is not the tensor's size, {want} bytes "
                                 f"(type {tensor.data_type}, shape {list(tensor.dims)[:8]})", length=length)
        refs.append(ExternalRef(tensor, where, location, offset, length))
    return refs


class DataFiles(Protocol):
    """The data files of one upload folder."""

    def size(self, location: str) -> int:
        """The size of the regular file ``location``; raises ModelLoadError when it may not be read."""

    def read(self, location: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, length), in the order given (ascending offsets)."""


def check_ranges(refs: list[ExternalRef], files: DataFiles, *, label: str) -> None:
    """Every range inside its file and no two overlapping, before anything is read."""
    by_file: dict[str, list[ExternalRef]] = {}
    for ref in refs:
        by_file.setdefault(ref.location, []).append(ref)
    for location, group in by_file.items():
        size = files.size(location)
        end_before = 0
        for ref in sorted(group, key=lambda r: (r.offset, r.length)):
            if ref.offset + ref.length > size:
                raise ModelLoadError(f"{label}: {ref.where} asks for bytes {ref.offset} to {ref.offset + ref.length} "
                                     f"of {location!r}, which has {size}; refused before reading",
                                     location=location, offset=ref.offset, length=ref.length)
            if ref.offset < end_before:
                raise ModelLoadError(f"{label}: {ref.where} overlaps another tensor's bytes in {location!r}; refused",
                                     location=location)
            end_before = ref.offset + ref.length


def load_external_data(model: Any, files: DataFiles | None, *, label: str) -> int:
    """Check every external reference of ``model``, then read them into the tensors; the bytes read.

    ``files`` None: the model may have no external data (then any reference is refused).
    """
    refs = external_refs(model, label=label)
    if not refs:
        return 0
    if files is None:
        raise ModelLoadError(f"{label}: {refs[0].where} is stored in an external file, and this model was given "
                             "without its data files", location=refs[0].location)
    check_ranges(refs, files, label=label)
    by_file: dict[str, list[ExternalRef]] = {}
    for ref in refs:
        by_file.setdefault(ref.location, []).append(ref)
    total = 0
    for location, group in sorted(by_file.items()):
        group.sort(key=lambda r: r.offset)
        for ref, data in zip(group, files.read(location, [(r.offset, r.length) for r in group])):
            if len(data) != ref.length:
                raise ModelLoadError(f"{label}: {location!r} ended before the bytes of {ref.where}")
            ref.tensor.raw_data = data
            del ref.tensor.external_data[:]
            ref.tensor.data_location = 0  # DEFAULT
            total += len(data)
    return total


class FolderFiles:
    """Data files in a folder on disk (the CLI): regular files with one link, opened without following links.

    Args:
        folder: the model's folder.
        label: the model's file name, for messages.
    """

    def __init__(self, folder: Path, *, label: str) -> None:
        self.folder, self.label = folder, label

    def _refuse(self, location: str, why: str) -> ModelLoadError:
        return ModelLoadError(f"{self.label}: external data file {location!r} {why}; only a regular file beside "
                              "the model (not a link, a device or a folder) is read", location=location)

    def _check(self, location: str, info: os.stat_result) -> None:
        if stat.S_ISLNK(info.st_mode):
            raise self._refuse(location, "is a symbolic link")
        if not stat.S_ISREG(info.st_mode):
            raise self._refuse(location, "is not a regular file")
        if info.st_nlink != 1:
            raise self._refuse(location, f"has {info.st_nlink} hard links")

    def _lstat(self, location: str) -> os.stat_result:
        try:
            return os.lstat(self.folder / location)
        except FileNotFoundError:
            raise ModelLoadError(f"{self.label}: external data file {location!r} is not beside the model",
                                 location=location) from None
        except OSError as exc:
            raise self._refuse(location, f"cannot be read ({exc.strerror})") from None

    def size(self, location: str) -> int:
        info = self._lstat(location)
        self._check(location, info)
        return info.st_size

    def read(self, location: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        before = self._lstat(location)
        self._check(location, before)
        dir_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:  # O_NONBLOCK: a FIFO swapped in after the check must not block the open
                fd = os.open(location, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError as exc:
                raise self._refuse(location, f"cannot be opened ({exc.strerror})") from None
        finally:
            os.close(dir_fd)
        try:
            info = os.fstat(fd)
            self._check(location, info)
            if (info.st_dev, info.st_ino, info.st_size) != (before.st_dev, before.st_ino, before.st_size):
                raise self._refuse(location, "changed while it was being checked")
            return [os.pread(fd, length, offset) for offset, length in ranges]
        finally:
            os.close(fd)


class ZipFiles:
    """Data files beside the model inside an ONNX bundle (:mod:`.onnx_bundle`), read without extracting.

    Args:
        archive: the open zip.
        bundle: its checked members.
        label: the bundle's name, for messages.
    """

    def __init__(self, archive: zipfile.ZipFile, bundle: Bundle, *, label: str) -> None:
        self.archive, self.bundle, self.label = archive, bundle, label

    def size(self, location: str) -> int:
        member = self.bundle.member(location)
        if member not in self.bundle.files:
            raise ModelLoadError(f"{self.label}: external data file {location!r} is not in the zip beside "
                                 f"{self.bundle.model!r}", location=location)
        return self.bundle.files[member]

    def read(self, location: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        out = []
        with self.archive.open(self.bundle.member(location)) as f:
            for offset, length in ranges:  # ascending: a deflated member is only ever read forward
                f.seek(offset)
                out.append(f.read(length))
        return out
