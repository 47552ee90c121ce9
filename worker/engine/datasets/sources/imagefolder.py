"""``imagefolder:<path>`` -- one sub-folder per class, image files inside (nested allowed).

Class names are the sorted sub-folder names. Files are listed (names only) first; only the
sampled ones are opened, and each of those must itself resolve inside the data roots, so a
symlink planted in the folder cannot read a file elsewhere. Hidden files and folders
(``.name``) are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ...errors import DatasetError
from ..images import read_image_file
from .base import Catalog, Source

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class ImageFolderSource(Source):
    """``imagefolder:<path>`` -- a class per sub-folder, decoded with PIL."""

    def catalog(self) -> Catalog:
        self._folder = self.roots.resolve(self.ref.path or "")
        if not self._folder.is_dir():
            raise DatasetError(f"imagefolder path {self.ref.path!r} is not a directory", path=self.ref.path)
        classes = sorted(e.name for e in os.scandir(self._folder)
                         if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DatasetError(f"imagefolder {self.ref.path!r} has no class sub-folders "
                               "(expected <path>/<class name>/<image files>)", path=self.ref.path)
        self._files: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            files = self._list_images(name)
            self._files.extend(files)
            labels.extend([label] * len(files))
        if not self._files:
            raise DatasetError(f"imagefolder {self.ref.path!r} has no image files "
                               f"({', '.join(sorted(IMAGE_EXTENSIONS))}) in its class folders",
                               path=self.ref.path)
        return Catalog(labels=torch.tensor(labels, dtype=torch.int64), class_names=classes)

    def _list_images(self, class_name: str) -> list[str]:
        """Image files under one class folder, as sorted '/'-separated relative paths."""
        out: list[str] = []
        seen: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(self._folder / class_name, followlinks=True):
            real = self.roots.check(dirpath, shown=self._relative(dirpath))
            if real in seen:  # a symlink loop
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out.extend(self._relative(os.path.join(dirpath, f)) for f in filenames
                       if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
        return sorted(out)

    def _relative(self, path: str) -> str:
        return Path(os.path.relpath(path, self._folder)).as_posix()

    def fetch(self, indices: Sequence[int]) -> list[torch.Tensor]:
        images = []
        for i in indices:
            rel = self._files[i]
            real = self.roots.check(self._folder / rel, shown=f"{self.ref.path}/{rel}")
            images.append(read_image_file(real, shown=f"{self.ref.path}/{rel}"))
        return images

    def item_id(self, index: int) -> str:
        return f"imagefolder:{self._files[index]}"
