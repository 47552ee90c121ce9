"""The per-image artifacts of report.html: a size-bounded gallery and an index of every file.

Images are embedded as ``data:`` URIs so the page opens offline; only PNG files whose bytes
start with the PNG signature are embedded (a file in the output folder is not proof of what
it holds). Past the caps, images are left out and the page says how many; every file, shown
or not, is listed with a link relative to the report (``artifacts/<suite>/<name>``), which
resolves beside ``OUT/report.html`` and under ``/v1/audits/{id}/report.html`` alike.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..safe_files import read_regular, regular_size, split_name

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: fragile artifacts are <sample>_<rkey>_maps.png / _pairs.png (rkey r80 or r_0p8): one card per (sample, r)
_FRAGILE = re.compile(r"^(?P<stem>.+_r_?[0-9p]+)_(?P<kind>maps|pairs)\.png$")
#: captions of one-file cards whose file name says what they show (else the file's stem)
_CAPTIONS = ((re.compile(r"^corruption_examples_(?P<family>[a-z]+)\.png$"),
              "{family} corruptions of the audit's first sample at severities 1, 3 and 5; red, marked x: the "
              "model's class is not the true class"),)


@dataclass(frozen=True)
class GalleryLimits:
    """Caps on what the page embeds.

    Args:
        max_images: images embedded at most, over all suites.
        max_images_per_suite: images embedded at most per suite, so that one suite's many
            files leave room for the others'.
        max_bytes: bytes of embedded images at most (before base64).
        max_file_bytes: a single image larger than this is linked, not embedded.
    """

    max_images: int = 40
    max_images_per_suite: int = 12
    max_bytes: int = 6 * 1024 * 1024
    max_file_bytes: int = 1024 * 1024


DEFAULT_LIMITS = GalleryLimits()


@dataclass
class Picture:
    caption: str
    href: str
    src: str | None = None  # data: URI, None when left out


@dataclass
class Card:
    """Pictures shown side by side (fragile: the maps beside the example pairs)."""

    title: str
    pictures: list[Picture]


@dataclass
class Gallery:
    cards: dict[str, list[Card]] = field(default_factory=dict)
    files: dict[str, list[tuple[str, int | None]]] = field(default_factory=dict)  # suite -> (href, size)
    shown: int = 0
    left_out: int = 0
    left_out_bytes: int = 0
    shown_bytes: int = 0


def _parts(out_dir: Path | None, rel: str) -> list[str] | None:
    """The components of an artifact path from the report (untrusted: the sandbox wrote it), or
    None when it is not below ``artifacts/``."""
    parts = split_name(rel) if out_dir is not None else None
    return parts if parts is not None and len(parts) > 1 and parts[0] == "artifacts" else None


def _size(out_dir: Path | None, rel: str) -> int | None:
    """The size of an artifact file, or None when it is missing, not a regular file or reached
    through a symlink (the folder is read without following any: worker.engine.safe_files)."""
    parts = _parts(out_dir, rel)
    return regular_size(out_dir, parts) if out_dir is not None and parts is not None else None


def _cards(suite: str, names: list[str]) -> list[Card]:
    """Group a suite's PNG artifacts into cards: fragile by (sample, r), the others one per file."""
    cards: list[Card] = []
    if suite == "fragile":
        by_stem: dict[str, dict[str, str]] = {}
        for rel in names:
            m = _FRAGILE.match(rel.rsplit("/", 1)[-1])
            if m:
                by_stem.setdefault(m["stem"], {})[m["kind"]] = rel
        for stem, kinds in by_stem.items():
            pics = [Picture({"maps": "FRI maps and confidence", "pairs": "example pairs"}[k], kinds[k])
                    for k in ("maps", "pairs") if k in kinds]
            cards.append(Card(stem, pics))
        grouped = {rel for kinds in by_stem.values() for rel in kinds.values()}
        names = [rel for rel in names if rel not in grouped]
    for rel in names:
        file = rel.rsplit("/", 1)[-1]
        stem = file.removesuffix(".png")
        caption = next((words.format(**m.groupdict()) for pattern, words in _CAPTIONS if (m := pattern.match(file))),
                       stem)
        cards.append(Card(stem.replace("_", " "), [Picture(caption, rel)]))
    return cards


def build_gallery(suites: Mapping[str, Mapping[str, Any]], out_dir: Path | None,
                  limits: GalleryLimits = DEFAULT_LIMITS) -> Gallery:
    """Cards of embedded images per suite (within ``limits``) and the index of every artifact file."""
    gallery = Gallery()
    for suite, entry in suites.items():
        rels = [str(a) for a in entry.get("artifacts") or [] if isinstance(a, str)]
        gallery.files[suite] = []
        for rel in rels:
            gallery.files[suite].append((rel, _size(out_dir, rel)))
        cards = _cards(suite, [r for r in rels if r.endswith(".png")])
        before = gallery.shown
        for card in cards:
            for pic in card.pictures:
                _embed(pic, out_dir, limits, gallery, room=gallery.shown - before < limits.max_images_per_suite)
        shown = [card for card in cards if any(pic.src for pic in card.pictures)]  # the rest: in the index
        if shown:
            gallery.cards[suite] = shown
    return gallery


def _embed(pic: Picture, out_dir: Path | None, limits: GalleryLimits, gallery: Gallery, room: bool) -> None:
    found = _size(out_dir, pic.href)
    size = found or 0
    fits = (room and found is not None and size <= limits.max_file_bytes and gallery.shown < limits.max_images
            and gallery.shown_bytes + size <= limits.max_bytes)
    parts = _parts(out_dir, pic.href)
    data = (read_regular(out_dir, parts, limits.max_file_bytes) or b"") if fits and out_dir and parts else b""
    if not fits or not data.startswith(PNG_SIGNATURE):
        gallery.left_out += 1
        gallery.left_out_bytes += size
        return
    pic.src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    gallery.shown += 1
    gallery.shown_bytes += len(data)
