"""Dataset references, data roots, sampling and the four sources, on tiny files in tmp_path."""

from __future__ import annotations

import os
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from worker.engine.datasets import (
    DataRoots,
    DatasetKind,
    DatasetRef,
    allocate,
    digits_split,
    digits_tensors,
    load_samples,
    stratified_indices,
)
from worker.engine.errors import DatasetError, PathNotAllowedError

# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def roots(data: Path) -> DataRoots:
    return DataRoots([data])


def _rgb(seed: int, size: tuple[int, int] = (6, 5)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def make_imagefolder(base: Path, per_class: dict[str, int]) -> Path:
    """PNG RGB images, one image per class saved as JPEG, named img_000.png ..."""
    for c, (name, n) in enumerate(sorted(per_class.items())):
        (base / name).mkdir(parents=True)
        for i in range(n):
            ext = "jpg" if i == 1 else "png"
            Image.fromarray(_rgb(100 * c + i)).save(base / name / f"img_{i:03d}.{ext}")
    return base


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _idx(path: Path, array: np.ndarray) -> None:
    """MNIST's raw idx format: big-endian magic (0, 0, type 0x08 = uint8, ndim), dims, bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root: Path, name: str = "MNIST", n_train: int = 30, n_test: int = 20) -> Path:
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def ids_of(ref: DatasetRef, roots: DataRoots | None = None) -> list[str]:
    return load_samples(ref, roots=roots).ids


# -- references -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, obj", [
    ("builtin:digits", {"kind": "builtin", "name": "digits"}),
    ("builtin:digits:train", {"kind": "builtin", "name": "digits", "split": "train"}),
    ("imagefolder:pets/v1", {"kind": "imagefolder", "path": "pets/v1"}),
    ("imagefolder:a:b", {"kind": "imagefolder", "path": "a:b"}),
    ("npz:arrays/x.npz", {"kind": "npz", "path": "arrays/x.npz"}),
    ("torchvision:CIFAR10:cifar", {"kind": "torchvision", "name": "CIFAR10", "root": "cifar"}),
    ("torchvision:SVHN:svhn:extra", {"kind": "torchvision", "name": "SVHN", "root": "svhn",
                                     "split": "extra"}),
    ("torchvision:mnist:/abs/root:train", {"kind": "torchvision", "name": "MNIST", "root": "/abs/root",
                                           "split": "train"}),
])
def test_string_and_object_forms_parse_to_the_same_ref(text: str, obj: dict) -> None:
    a = DatasetRef.parse(text, n_samples=7, seed=3)
    b = DatasetRef.parse({**obj, "n_samples": 7, "seed": 3})
    assert a == b
    assert DatasetRef.parse(a.to_dict()) == a
    assert DatasetRef.parse(str(a), n_samples=7, seed=3) == a


def test_to_dict_is_canonical_with_defaults() -> None:
    ref = DatasetRef.parse("torchvision:cifar100:c")
    assert ref.kind is DatasetKind.TORCHVISION
    assert ref.to_dict() == {"kind": "torchvision", "name": "CIFAR100", "root": "c", "split": "test",
                             "n_samples": 100, "seed": 0}
    assert DatasetRef.parse("npz:x.npz").to_dict() == {"kind": "npz", "path": "x.npz", "n_samples": 100,
                                                       "seed": 0}


def test_keyword_arguments_override_the_reference() -> None:
    ref = DatasetRef.parse({"kind": "builtin", "name": "digits", "n_samples": 5, "seed": 1,
                            "classes": ["1"]}, n_samples=9, classes=[2, "3"])
    assert (ref.n_samples, ref.seed, ref.classes) == (9, 1, (2, "3"))
    assert ref.to_dict()["classes"] == [2, "3"]


def test_json_string_is_the_object_form() -> None:
    assert DatasetRef.parse('{"kind": "npz", "path": "x.npz", "seed": 4}') == DatasetRef.parse(
        "npz:x.npz", seed=4)


@pytest.mark.parametrize("value, fragment", [
    ("hdf5:x", "unknown dataset kind 'hdf5'"),
    ({"kind": "parquet", "path": "x"}, "unknown dataset kind 'parquet'"),
    ("digits", "is not valid"),
    ({"kind": "npz", "path": "x", "colour": 1}, "unknown keys ['colour']"),
    ({"path": "x"}, "needs 'kind'"),
    ({"kind": "npz"}, "needs 'path'"),
    ({"kind": "builtin", "name": "digits", "root": "x"}, "'root' does not apply to kind 'builtin'"),
    ({"kind": "imagefolder", "path": "x", "split": "test"}, "'split' does not apply"),
    ("torchvision:ImageNet:root", "unknown torchvision data set 'ImageNet'"),
    ("torchvision:CIFAR10", "torchvision:<Name>:<root>"),
    ("torchvision:CIFAR10:root:extra", "has no split 'extra'"),
    ({"kind": "torchvision", "name": "MNIST", "root": "r", "split": "val"}, "has no split 'val'"),
    ("builtin:iris", "unknown builtin data set 'iris'"),
    ("builtin:digits:validation", "has no split 'validation'"),
    ({"kind": "npz", "path": 3}, "'path' must be a non-empty string"),
    ({"kind": "npz", "path": "x", "n_samples": 0}, "'n_samples' must be >= 1"),
    ({"kind": "npz", "path": "x", "n_samples": "10"}, "'n_samples' must be an integer"),
    ({"kind": "npz", "path": "x", "n_samples": True}, "'n_samples' must be an integer"),
    ({"kind": "npz", "path": "x", "seed": -1}, "'seed' must be between"),
    ({"kind": "npz", "path": "x", "classes": "cat"}, "'classes' must be a list"),
    ({"kind": "npz", "path": "x", "classes": []}, "'classes' must be a non-empty list"),
    ({"kind": "npz", "path": "x", "classes": [1.5]}, "entries must be class names or integer"),
    ({"kind": "npz", "path": "x", "classes": ["a", "a"]}, "duplicates"),
    (42, "must be a string or an object"),
])
def test_bad_references_are_dataset_errors(value: object, fragment: str) -> None:
    with pytest.raises(DatasetError) as info:
        DatasetRef.parse(value)  # type: ignore[arg-type]
    assert fragment in info.value.message


# -- builtin ----------------------------------------------------------------------------------


def test_digits_tensors_and_split() -> None:
    x, y = digits_tensors()
    assert x.shape == (1797, 1, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.9
    train, test = digits_split()
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert sorted(train.tolist() + test.tolist()) == list(range(1797))
    counts, test_counts = torch.bincount(y), torch.bincount(y[test], minlength=10)
    assert all(int(t) == round(0.2 * int(c)) for t, c in zip(test_counts, counts))
    assert all(torch.equal(a, b) for a, b in zip(digits_split(), (train, test)))
    assert not torch.equal(digits_split(seed=1)[1], test)


def test_builtin_digits_serves_the_held_out_split() -> None:
    ref = DatasetRef.parse("builtin:digits", n_samples=5000)
    samples = load_samples(ref, num_classes=10)
    _, test = digits_split()
    assert len(samples) == len(test)
    assert {int(i.split(":")[1]) for i in samples.ids} == set(test.tolist())
    assert samples.class_names == [str(i) for i in range(10)]
    assert samples.reference == ref.to_dict()
    assert samples.labels.dtype == torch.int64
    for img in samples.images:
        assert img.shape == (1, 32, 32) and img.dtype == torch.float32
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    x, y = digits_tensors()
    k = int(samples.ids[7].split(":")[1])
    assert torch.equal(samples.images[7], x[k]) and int(samples.labels[7]) == int(y[k])


def test_builtin_train_and_all_splits() -> None:
    train_ids = ids_of(DatasetRef.parse("builtin:digits:train", n_samples=100))
    test_ids = ids_of(DatasetRef.parse("builtin:digits:test", n_samples=100))
    assert not set(train_ids) & set(test_ids)
    train_idx = set(digits_split()[0].tolist())
    assert {int(i.split(":")[1]) for i in train_ids} <= train_idx
    assert len(ids_of(DatasetRef.parse("builtin:digits:all", n_samples=10_000))) == 1797


# -- sampling ---------------------------------------------------------------------------------


def test_stratified_sample_is_proportional_within_one() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)
    for n in (4, 7, 10, 33, 99):
        take = Counter(labels[stratified_indices(labels, n, seed=0)].tolist())
        assert sum(take.values()) == n
        for c, m in Counter(labels.tolist()).items():
            assert abs(take[c] - n * m / 100) <= 1, (n, c)
            assert take[c] >= 1


def test_every_class_gets_one_when_n_covers_the_classes() -> None:
    counts = [1000, 1, 1, 1, 2]
    assert allocate(counts, 5) == [1, 1, 1, 1, 1]
    assert sum(allocate(counts, 6)) == 6 and min(allocate(counts, 6)) >= 1
    assert sum(allocate(counts, 3)) == 3
    assert allocate(counts, 10_000) == counts


def test_sample_is_deterministic_and_sorted_by_class() -> None:
    labels = torch.randint(0, 7, (500,), generator=torch.Generator().manual_seed(5))
    a = stratified_indices(labels, 60, seed=11)
    assert torch.equal(a, stratified_indices(labels, 60, seed=11))
    assert not torch.equal(a, stratified_indices(labels, 60, seed=12))
    assert labels[a].tolist() == sorted(labels[a].tolist())
    assert len(set(a.tolist())) == 60
    assert sorted(stratified_indices(labels, 10_000, seed=0).tolist()) == list(range(500))


def test_class_subset_keeps_the_same_items_per_class() -> None:
    labels = torch.arange(300) % 3
    full = stratified_indices(labels, 300, seed=2)
    only_two = stratified_indices(labels, 10, seed=2, classes=[2])
    assert set(labels[only_two].tolist()) == {2}
    assert only_two.tolist() == full[labels[full] == 2][:10].tolist()


def test_class_subset_by_name_and_index_and_unknown_class() -> None:
    ref = DatasetRef.parse("builtin:digits", n_samples=20, classes=["3", 7])
    samples = load_samples(ref)
    assert set(samples.labels.tolist()) == {3, 7}
    assert Counter(samples.labels.tolist()) == {3: 10, 7: 10}
    assert samples.class_names == [str(i) for i in range(10)]
    with pytest.raises(DatasetError, match=r"unknown classes \['cat', 12\]; valid names: \['0', '1'"):
        load_samples(DatasetRef.parse("builtin:digits", classes=["cat", 12, "1"]))


def test_same_ref_and_seed_give_identical_samples(data: Path, roots: DataRoots) -> None:
    make_imagefolder(data / "pets", {"cat": 6, "dog": 4, "owl": 3})
    ref = DatasetRef.parse("imagefolder:pets", n_samples=5, seed=9)
    first = load_samples(ref, roots=roots)
    again = load_samples(DatasetRef.parse(ref.to_dict()), roots=roots)
    assert first.ids == again.ids
    assert all(torch.equal(a, b) for a, b in zip(first.images, again.images))
    assert Counter(first.labels.tolist()) == {0: 2, 1: 2, 2: 1}


# -- imagefolder ------------------------------------------------------------------------------


def test_imagefolder_png_jpg_grey_and_rgba(data: Path, roots: DataRoots) -> None:
    folder = make_imagefolder(data / "pets", {"cat": 3, "dog": 2})
    (folder / "bird").mkdir()
    Image.fromarray(np.full((7, 9), 128, np.uint8), mode="L").save(folder / "bird" / "grey.PNG")
    rgba = np.concatenate([_rgb(5, (4, 4)), np.full((4, 4, 1), 200, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(folder / "bird" / "alpha.png")
    (folder / "bird" / "notes.txt").write_text("not an image")
    samples = load_samples(DatasetRef.parse("imagefolder:pets", n_samples=100), roots=roots, num_classes=3)
    assert samples.class_names == ["bird", "cat", "dog"]
    assert sorted(samples.ids) == ["imagefolder:bird/alpha.png", "imagefolder:bird/grey.PNG",
                                   "imagefolder:cat/img_000.png", "imagefolder:cat/img_001.jpg",
                                   "imagefolder:cat/img_002.png", "imagefolder:dog/img_000.png",
                                   "imagefolder:dog/img_001.jpg"]
    assert samples.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert all(img.shape[0] == 3 and img.dtype == torch.float32 for img in samples.images)
    by_id = dict(zip(samples.ids, samples.images))
    grey = by_id["imagefolder:bird/grey.PNG"]
    assert grey.shape == (3, 7, 9) and torch.allclose(grey, torch.full_like(grey, 128 / 255))
    assert by_id["imagefolder:bird/alpha.png"].shape == (3, 4, 4)
    assert by_id["imagefolder:cat/img_001.jpg"].shape == (3, 6, 5)
    expected = torch.from_numpy(_rgb(0)).permute(2, 0, 1).float() / 255  # cat is class 0; lossless
    assert torch.equal(by_id["imagefolder:cat/img_000.png"], expected)


def test_imagefolder_all_grey_stays_one_channel(data: Path, roots: DataRoots) -> None:
    for name in ("a", "b"):
        (data / "g" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((3, 3), np.uint8)).save(data / "g" / name / "x.bmp")
    samples = load_samples(DatasetRef.parse("imagefolder:g"), roots=roots)
    assert [img.shape for img in samples.images] == [(1, 3, 3), (1, 3, 3)]


def test_imagefolder_decodes_only_the_sampled_files(data: Path, roots: DataRoots) -> None:
    make_imagefolder(data / "pets", {"cat": 2, "dog": 2})
    (data / "pets" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    samples = load_samples(DatasetRef.parse("imagefolder:pets", classes=["cat"]), roots=roots)
    assert len(samples) == 2
    with pytest.raises(DatasetError, match=r"cannot read image pets/dog/broken\.png"):
        load_samples(DatasetRef.parse("imagefolder:pets"), roots=roots)


@pytest.mark.parametrize("layout", ["empty", "files_only", "no_images"])
def test_imagefolder_without_classes_or_images(data: Path, roots: DataRoots, layout: str) -> None:
    folder = data / "set"
    folder.mkdir()
    if layout == "files_only":
        Image.fromarray(_rgb(0)).save(folder / "x.png")
    if layout == "no_images":
        (folder / "cat").mkdir()
        (folder / "cat" / "readme.md").write_text("hi")
    with pytest.raises(DatasetError, match="has no (class sub-folders|image files)"):
        load_samples(DatasetRef.parse("imagefolder:set"), roots=roots)


def test_missing_path_is_a_dataset_error(roots: DataRoots) -> None:
    with pytest.raises(DatasetError, match="not found under the data roots") as info:
        load_samples(DatasetRef.parse("imagefolder:nowhere"), roots=roots)
    assert not isinstance(info.value, PathNotAllowedError)
    with pytest.raises(DatasetError, match="not found"):
        load_samples(DatasetRef.parse("npz:nothing.npz"), roots=roots)


# -- npz --------------------------------------------------------------------------------------


def test_npz_uint8_nhw(data: Path, roots: DataRoots) -> None:
    images = np.random.default_rng(0).integers(0, 256, (12, 5, 4), dtype=np.uint8)
    write_npz(data / "x.npz", images=images, labels=np.arange(12) % 3)
    samples = load_samples(DatasetRef.parse("npz:x.npz", n_samples=6), roots=roots, num_classes=10)
    assert samples.class_names == ["0", "1", "2"]
    assert Counter(samples.labels.tolist()) == {0: 2, 1: 2, 2: 2}
    k = int(samples.ids[0].split(":")[1])
    assert samples.images[0].shape == (1, 5, 4)
    assert torch.equal(samples.images[0][0], torch.from_numpy(images[k]).float() / 255)


def test_npz_float_nhwc_with_class_names(data: Path, roots: DataRoots) -> None:
    images = np.random.default_rng(1).random((8, 6, 6, 3), dtype=np.float32)
    write_npz(data / "f.npz", images=images, labels=np.array([0, 1] * 4),
              class_names=np.array(["cat", "dog"]))
    samples = load_samples(DatasetRef.parse("npz:f.npz", classes=["dog"]), roots=roots)
    assert samples.class_names == ["cat", "dog"] and set(samples.labels.tolist()) == {1}
    assert sorted(samples.ids) == ["npz:1", "npz:3", "npz:5", "npz:7"]
    k = int(samples.ids[0].split(":")[1])
    assert torch.equal(samples.images[0], torch.from_numpy(images[k]).permute(2, 0, 1))


@pytest.mark.parametrize("arrays, fragment", [
    ({"images": np.zeros((4, 3, 3), np.uint8)}, "lacks arrays ['labels']"),
    ({"images": np.zeros((4, 3, 3), np.uint8), "labels": np.zeros(5, np.int64)}, "must have shape (4,)"),
    ({"images": np.zeros((4, 3, 3, 4), np.uint8), "labels": np.zeros(4, np.int64)}, "C in (1, 3)"),
    ({"images": np.full((4, 3, 3), 2.0), "labels": np.zeros(4, np.int64)}, "must lie in [0, 1]"),
    ({"images": np.zeros((4, 3, 3), np.int32), "labels": np.zeros(4, np.int64)}, "uint8 or float"),
    ({"images": np.zeros((4, 3, 3), np.uint8), "labels": np.zeros(4)}, "'labels' must be integers"),
    ({"images": np.zeros((2, 3, 3), np.uint8), "labels": np.array([0, 2]),
      "class_names": np.array(["a", "b"])}, "labels must lie in [0, 2)"),
    ({"images": np.zeros((2, 3, 3), np.uint8), "labels": np.array([0, -1])}, "negative label"),
    ({"images": np.zeros((2, 3, 3), np.uint8), "labels": np.array([0, 1]),
      "class_names": np.array([1, 2])}, "'class_names' must be a 1-D array of strings"),
])
def test_bad_npz_contents(data: Path, roots: DataRoots, arrays: dict, fragment: str) -> None:
    write_npz(data / "bad.npz", **arrays)
    with pytest.raises(DatasetError) as info:
        load_samples(DatasetRef.parse("npz:bad.npz"), roots=roots)
    assert fragment in info.value.message


def test_npz_with_pickled_objects_is_refused(data: Path, roots: DataRoots) -> None:
    objects = np.empty(2, dtype=object)
    objects[:] = [{"a": 1}, {"b": 2}]
    write_npz(data / "obj.npz", images=objects, labels=np.array([0, 1]))
    with pytest.raises(DatasetError, match="cannot be read: .*pickle"):
        load_samples(DatasetRef.parse("npz:obj.npz"), roots=roots)


@pytest.mark.parametrize("content", [b"garbage, not a zip", b"PK\x03\x04 truncated zip", b""])
def test_corrupt_npz(data: Path, roots: DataRoots, content: bytes) -> None:
    (data / "c.npz").write_bytes(content)
    with pytest.raises(DatasetError, match="npz 'c.npz' cannot be read"):
        load_samples(DatasetRef.parse("npz:c.npz"), roots=roots)


def test_npy_file_is_not_an_archive(data: Path, roots: DataRoots) -> None:
    np.save(data / "a.npy", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DatasetError, match="not an .npz archive"):
        load_samples(DatasetRef.parse("npz:a.npy"), roots=roots)


def test_more_dataset_classes_than_the_model(data: Path, roots: DataRoots) -> None:
    names = np.array([f"c{i}" for i in range(100)])
    write_npz(data / "many.npz", images=np.zeros((100, 2, 2), np.uint8), labels=np.arange(100),
              class_names=names)
    with pytest.raises(DatasetError, match="dataset has 100 classes but the model has 10"):
        load_samples(DatasetRef.parse("npz:many.npz"), roots=roots, num_classes=10)
    assert len(load_samples(DatasetRef.parse("npz:many.npz"), roots=roots, num_classes=100)) == 100


# -- torchvision ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_torchvision_mnist_read_from_idx_files(data: Path, roots: DataRoots, name: str) -> None:
    make_mnist(data / "tv", name=name)
    samples = load_samples(DatasetRef.parse(f"torchvision:{name}:tv", n_samples=10), roots=roots,
                           num_classes=10)
    assert len(samples) == 10 and Counter(samples.labels.tolist()) == {c: 1 for c in range(10)}
    assert all(i.startswith(f"{name}:test:") for i in samples.ids)
    assert all(img.shape == (1, 28, 28) and img.dtype == torch.float32 for img in samples.images)
    assert len(samples.class_names) == 10
    train = load_samples(DatasetRef.parse(f"torchvision:{name}:tv:train", n_samples=1000), roots=roots)
    assert len(train) == 30 and train.ids[0].startswith(f"{name}:train:")
    raw = (data / "tv" / name / "raw" / "t10k-images-idx3-ubyte").read_bytes()[16:]
    k = int(samples.ids[3].split(":")[2])
    pixels = np.frombuffer(raw, np.uint8).reshape(20, 28, 28)[k]
    assert torch.equal(samples.images[3][0], torch.from_numpy(pixels.copy()).float() / 255)


def test_torchvision_cifar10_pickle_batches(data: Path, roots: DataRoots,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import cifar

    folder = data / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}
        (folder / batch).write_bytes(pickle.dumps(entry))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    # torchvision checks the files against the MD5 sums of the real CIFAR-10; ours are fakes.
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    samples = load_samples(DatasetRef.parse("torchvision:CIFAR10:cifar", n_samples=5, classes=["cat", "dog",
                                                                                                "ship"]),
                           roots=roots, num_classes=10)
    assert samples.class_names == names
    assert sorted(set(samples.labels.tolist())) == [3, 5, 8]
    assert all(img.shape == (3, 32, 32) for img in samples.images)
    assert samples.ids[0] == "CIFAR10:test:3"


def test_torchvision_files_missing(data: Path, roots: DataRoots) -> None:
    (data / "empty").mkdir()
    with pytest.raises(DatasetError, match="not found or corrupted under 'empty'.*never downloads"):
        load_samples(DatasetRef.parse("torchvision:CIFAR10:empty"), roots=roots)
    with pytest.raises(DatasetError, match="MNIST/raw"):
        load_samples(DatasetRef.parse("torchvision:MNIST:empty"), roots=roots)
    with pytest.raises(DatasetError, match="not found under the data roots"):
        load_samples(DatasetRef.parse("torchvision:CIFAR10:absent"), roots=roots)


# -- data roots -------------------------------------------------------------------------------


def test_roots_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (b / "x.npz").write_bytes(b"")
    monkeypatch.setenv("ROBUSTAUDIT_DATA_ROOTS", os.pathsep.join([str(a), str(b)]))
    roots = DataRoots.from_env()
    assert list(roots) == [Path(os.path.realpath(a)), Path(os.path.realpath(b))]
    assert roots.resolve("x.npz") == Path(os.path.realpath(b / "x.npz"))
    monkeypatch.delenv("ROBUSTAUDIT_DATA_ROOTS")
    monkeypatch.delenv("ROBUSTAUDIT_HOME", raising=False)
    monkeypatch.delenv("ROBUSTAUDIT_STORAGE_DIR", raising=False)
    monkeypatch.chdir(a)  # the default is the storage folder's data/, never the working directory itself
    assert list(DataRoots.from_env()) == [Path(os.path.realpath(a / "var" / "storage" / "data"))]


@pytest.mark.parametrize("env", [{}, {"ROBUSTAUDIT_HOME": "h"}, {"ROBUSTAUDIT_STORAGE_DIR": "/srv/s"},
                                 {"ROBUSTAUDIT_HOME": "h", "ROBUSTAUDIT_STORAGE_DIR": "s"},
                                 {"ROBUSTAUDIT_DATA_ROOTS": "d1" + os.pathsep + "d2"}])
def test_the_service_and_the_engine_agree_on_the_data_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            env: dict[str, str]) -> None:
    from service.config import Config

    monkeypatch.chdir(tmp_path)
    engine = list(DataRoots.from_env(env))
    assert [Path(os.path.realpath(r)) for r in Config.from_env(env).data_roots] == engine
    assert Path(os.path.realpath(tmp_path)) not in engine  # never the working directory by default


def test_env_roots_are_used_by_default(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_npz(data / "x.npz", images=np.zeros((2, 2, 2), np.uint8), labels=np.array([0, 1]))
    monkeypatch.setenv("ROBUSTAUDIT_DATA_ROOTS", str(data))
    assert len(load_samples(DatasetRef.parse("npz:x.npz"))) == 2


def test_relative_paths_try_each_root_in_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "set").mkdir(parents=True)
    (b / "set").mkdir(parents=True)
    (b / "only_b").mkdir()
    roots = DataRoots([a, b])
    assert roots.resolve("set") == Path(os.path.realpath(a / "set"))
    assert roots.resolve("only_b") == Path(os.path.realpath(b / "only_b"))


def test_absolute_path_inside_a_root_is_accepted(data: Path, roots: DataRoots) -> None:
    write_npz(data / "x.npz", images=np.zeros((2, 2, 2), np.uint8), labels=np.array([0, 1]))
    assert len(load_samples(DatasetRef.parse(f"npz:{data / 'x.npz'}"), roots=roots)) == 2


def test_dotdot_escape_is_refused(tmp_path: Path, data: Path, roots: DataRoots) -> None:
    write_npz(tmp_path / "secret.npz", images=np.zeros((2, 2, 2), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(PathNotAllowedError, match="outside the data roots.*ROBUSTAUDIT_DATA_ROOTS") as info:
        load_samples(DatasetRef.parse("npz:../secret.npz"), roots=roots)
    assert "../secret.npz" in info.value.message and str(roots.roots[0]) in info.value.message
    with pytest.raises(PathNotAllowedError):  # refused whether or not it exists
        roots.resolve("../../nothing/here")
    with pytest.raises(PathNotAllowedError):
        roots.resolve(f"{data}/../secret.npz")


def test_absolute_path_elsewhere_is_refused(tmp_path: Path, roots: DataRoots) -> None:
    write_npz(tmp_path / "secret.npz", images=np.zeros((2, 2, 2), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(PathNotAllowedError):
        load_samples(DatasetRef.parse(f"npz:{tmp_path / 'secret.npz'}"), roots=roots)
    with pytest.raises(PathNotAllowedError):
        roots.resolve("/etc/passwd")
    (tmp_path / "data2").mkdir()
    with pytest.raises(PathNotAllowedError):  # a sibling whose name starts like the root
        roots.resolve(str(tmp_path / "data2"))


def test_symlinked_dir_pointing_out_is_refused(tmp_path: Path, data: Path, roots: DataRoots) -> None:
    outside = make_imagefolder(tmp_path / "outside", {"cat": 1, "dog": 1})
    (data / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathNotAllowedError):
        load_samples(DatasetRef.parse("imagefolder:link"), roots=roots)


def test_symlinked_class_dir_pointing_out_is_refused(tmp_path: Path, data: Path, roots: DataRoots) -> None:
    make_imagefolder(data / "pets", {"cat": 1})
    outside = make_imagefolder(tmp_path / "outside", {"dog": 1})
    (data / "pets" / "dog").symlink_to(outside / "dog", target_is_directory=True)
    with pytest.raises(PathNotAllowedError):
        load_samples(DatasetRef.parse("imagefolder:pets"), roots=roots)


def test_symlinked_image_pointing_out_is_refused(tmp_path: Path, data: Path, roots: DataRoots) -> None:
    make_imagefolder(data / "pets", {"cat": 2, "dog": 2})
    Image.fromarray(_rgb(0)).save(tmp_path / "secret.png")
    (data / "pets" / "dog" / "z_link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(PathNotAllowedError, match="z_link.png"):
        load_samples(DatasetRef.parse("imagefolder:pets"), roots=roots)


def test_torchvision_file_symlinked_out_is_refused(tmp_path: Path, data: Path, roots: DataRoots) -> None:
    make_mnist(data / "tv")
    make_mnist(tmp_path / "elsewhere")
    label_file = data / "tv" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    label_file.unlink()
    label_file.symlink_to(tmp_path / "elsewhere" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")
    with pytest.raises(PathNotAllowedError, match="t10k-labels-idx1-ubyte"):
        load_samples(DatasetRef.parse("torchvision:MNIST:tv"), roots=roots)


def test_symlinks_inside_the_roots_are_followed(data: Path, roots: DataRoots) -> None:
    make_imagefolder(data / "store", {"cat": 2, "dog": 1})
    (data / "alias").symlink_to(data / "store", target_is_directory=True)
    assert len(load_samples(DatasetRef.parse("imagefolder:alias"), roots=roots)) == 3
