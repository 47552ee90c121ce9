"""Typed errors of the engine.

Every error a user can cause derives from :class:`AuditInputError`; its message says what
to fix. The CLI maps these to exit code 2, the API to a 4xx, a worker to a ``failed`` audit
with the message as the reason. Anything else escaping the engine is a bug.
"""

from __future__ import annotations

from typing import Any


class AuditError(Exception):
    """Base of every error the engine raises on purpose."""

    code: str = "audit_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class AuditInputError(AuditError):
    """The request, a file or a reference is wrong: the user can fix it."""

    code = "invalid_input"


class ModelLoadError(AuditInputError):
    """The checkpoint cannot be read, or is not a model we accept."""

    code = "model_load_error"


class ModelCardError(AuditInputError):
    """The model card is missing a field, or a field has a wrong value."""

    code = "model_card_error"


class ModelOutputError(AuditInputError):
    """The model runs but its output is unusable (wrong shape, NaN, ...)."""

    code = "model_output_error"


class DatasetError(AuditInputError):
    """The dataset reference is wrong, or its files are missing or corrupt."""

    code = "dataset_error"


class PathNotAllowedError(DatasetError):
    """A path resolves outside the configured data roots."""

    code = "path_not_allowed"


class InvalidPathError(DatasetError):
    """A path no filesystem can hold: too long, a component too long, or a NUL byte."""

    code = "invalid_path"


class SpecError(AuditInputError):
    """The audit specification (suites, parameters, gates) is invalid."""

    code = "invalid_spec"


class AuditCancelled(AuditError):
    """The audit was cancelled; raised at the next batch boundary."""

    code = "cancelled"
