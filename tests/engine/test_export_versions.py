"""torch.export archives across torch versions: the shipped .pt2 (exported by torch 2.15) loads on
every torch in pyproject's range (CI runs this file on the floor too, see .ci/floor), and a program
this torch cannot read is refused with both versions named, not with torch's bare message."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from worker.engine.errors import ModelLoadError
from worker.engine.models import load_classifier

DEMO = Path(__file__).resolve().parents[2] / "worker" / "engine" / "assets" / "demo"
EXPORT, CARD, STATE = DEMO / "digits_cnn_export.pt2", DEMO / "digits_cnn_export.card.json", DEMO / "digits_cnn.pt"


def rewrite_program(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of ``src`` whose models/*.json program went through ``edit``; every other member as it was."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if "/models/" in info.filename and info.filename.endswith(".json"):
                program = json.loads(data)
                edit(program)
                data = json.dumps(program).encode()
            zout.writestr(info, data)
    return dst


def test_shipped_program_loads_and_matches_its_state_dict():
    """The demo .pt2 and the demo state dict are the same network: equal logits on this torch."""
    exported = load_classifier(EXPORT, CARD)
    plain = load_classifier(STATE, DEMO / "digits_cnn.card.json")
    x = torch.rand(5, *exported.input_size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(exported.logits(x), plain.logits(x), rtol=1e-4, atol=1e-4)
    with zipfile.ZipFile(EXPORT) as z:
        written_by = json.loads(z.read("digits_cnn/models/model.json"))["torch_version"]
    assert written_by.startswith("2.15")  # so on the floor this is a newer torch's archive


def test_other_schema_major_is_refused_naming_both_torches(tmp_path):
    def future(program: dict[str, Any]) -> None:
        program["schema_version"]["major"] += 1
        program["torch_version"] = "9.1.0"

    path = rewrite_program(EXPORT, tmp_path / "future.pt2", future)
    with pytest.raises(ModelLoadError) as err:
        load_classifier(path, CARD)
    message = str(err.value)
    assert "exported by torch 9.1.0" in message and f"runs torch {torch.__version__}" in message
    assert "or older" in message


def test_newer_minor_schema_that_fails_says_which_torch_wrote_it(tmp_path):
    """A program from a newer torch (higher minor schema) that this torch cannot read: the error
    names the writer, the reader, and what to do."""
    def newer_and_unreadable(program: dict[str, Any]) -> None:
        program["schema_version"]["minor"] += 50
        program["torch_version"] = "3.2.0"
        del program["graph_module"]["signature"]  # what a field this torch does not know looks like to it

    path = rewrite_program(EXPORT, tmp_path / "newer.pt2", newer_and_unreadable)
    with pytest.raises(ModelLoadError, match="not a readable torch.export program") as err:
        load_classifier(path, CARD)
    assert "exported by torch 3.2.0" in str(err.value) and "or run the worker on a newer torch" in str(err.value)


def test_version_note_only_when_the_writer_is_newer(tmp_path):
    """The same unreadable program from the shipped archive's torch (2.15, schema 8.20): the note
    appears on an older torch (the floor) and not on one that reads that schema (the pinned torch)."""
    from torch._export.serde.schema import SCHEMA_VERSION

    path = rewrite_program(EXPORT, tmp_path / "broken.pt2", lambda p: p["graph_module"].pop("signature"))
    with pytest.raises(ModelLoadError, match="not a readable torch.export program") as err:
        load_classifier(path, CARD)
    with zipfile.ZipFile(EXPORT) as z:
        schema = json.loads(z.read("digits_cnn/models/model.json"))["schema_version"]
    newer = (schema["major"], schema["minor"]) > tuple(SCHEMA_VERSION)
    assert ("exported by torch 2.15" in str(err.value)) == newer
