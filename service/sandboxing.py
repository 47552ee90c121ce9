"""The service's two uses of the sandbox (:mod:`worker.sandbox`): the upload check in the API
and the audit run in a worker. Neither process loads an uploaded model itself.

Inside the sandbox a registered model appears as ``<model id><suffix>`` (an upload being
checked, as its sanitised file name), so every message and report names ids and file names,
never a server path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from worker.engine.errors import AuditInputError
from worker.sandbox import (
    Sandbox,
    SandboxFailed,
    SandboxJob,
    SandboxLimits,
    SandboxMode,
    SandboxUnavailable,
    code_paths,
)

from .config import Config
from .store.models import Model, ModelKind

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,12}$")


class SandboxedInputError(AuditInputError):
    """An input error the engine raised inside the sandbox, with the engine's own code."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.code = code


class SandboxRefused(Exception):
    """The sandbox cannot run here, died or timed out: the model was not (fully) checked.

    Args:
        code: ``sandbox_unavailable``, ``sandbox_timeout`` or ``sandbox_failed``.
        message: what happened.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def make_sandbox(config: Config, *, wall_s: float, gpu: bool = False, rss_mb: int | None = None) -> Sandbox:
    """The configured sandbox: the service's home and storage and the job store's and broker's
    folders are hidden inside it, and the child runs as ``ROBUSTAUDIT_SANDBOX_USER``.

    On a GPU the address-space limit is left off: CUDA reserves far more address space than
    it uses, so there the container's memory limit is what bounds the process.
    """
    memory = None if gpu or not config.sandbox_memory_mb else config.sandbox_memory_mb
    limits = SandboxLimits(memory_mb=memory, wall_s=wall_s, rss_mb=rss_mb,
                           cpu_s=int(max(60.0, wall_s) * 4))
    folders, files = store_paths(config)
    return Sandbox(SandboxMode(config.sandbox), limits, hide=(config.home, config.storage_dir, *folders),
                   user=config.sandbox_user, mask=files)


#: files SQLite keeps beside a database
_SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def store_paths(config: Config) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(folders to hide, files to mask) of the SQLite job store and broker, wherever their URLs point.

    The folder of each database file is hidden. Where that folder cannot be hidden (the root, or a
    folder the sandbox needs: the code's), the database files themselves are masked instead. A
    server database (PostgreSQL, Redis) is reached over the network or a socket in /run, neither
    of which the sandbox has.
    """
    needed = {Path("/"), *code_paths()}
    folders: list[Path] = []
    files: list[Path] = []
    for url in (config.database_url, config.broker_url):
        database = _sqlite_file(url)
        if database is None:
            continue
        folder = database.parent
        if folder in needed:
            files += [database.with_name(database.name + side) for side in _SQLITE_SIDE_FILES]
        else:
            folders.append(folder)
    return tuple(dict.fromkeys(folders)), tuple(dict.fromkeys(files))


def _sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL (``sqlite:///path``, ``sqla+sqlite:///path``), resolved."""
    scheme, sep, rest = url.partition(":///")
    if not sep or scheme.split("+")[-1] != "sqlite" or rest in ("", ":memory:"):
        return None
    path = rest.split("?", 1)[0]
    return Path(os.path.realpath(path if path.startswith("/") else os.path.join(os.getcwd(), path)))


def file_name(name: str, fallback: str) -> str:
    """A safe single-component file name from a client's file name (keeps a short suffix)."""
    base = _UNSAFE.sub("_", Path(name or "").name).strip("._")[:100]
    return base or fallback


def input_name(model: Model) -> str:
    """The name of a registered model's file inside the sandbox: its id and the file's suffix."""
    suffix = Path(model.path).suffix
    return model.id + (suffix if _SUFFIX.match(suffix) else "")


def run_job(sandbox: Sandbox, job: SandboxJob, **kwargs: Any) -> dict[str, Any]:
    """The job's result; an engine input error comes back as :class:`SandboxedInputError`.

    Raises:
        SandboxedInputError: the model or the request is wrong (a 422, or a failed audit).
        SandboxRefused: the sandbox could not run the job to the end.
    """
    try:
        outcome = sandbox.run(job, **kwargs)
    except SandboxUnavailable as exc:
        raise SandboxRefused("sandbox_unavailable", str(exc)) from None
    except SandboxFailed as exc:
        raise SandboxRefused(exc.code, exc.message) from None
    if outcome.error is not None:
        error = outcome.error
        raw_details = error.get("details")
        details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
        # an exception the engine did not raise on purpose: a code, and our words for it
        if error.get("unexpected") is True or error["code"] in ("internal_error", "cancelled"):
            code = error["code"] if error["code"] in MODEL_FAILURES else "internal_error"
            raise SandboxRefused(code, failure_message(code, sandbox.limits))
        raise SandboxedInputError(error["code"], error["message"], **details)
    return outcome.result or {}


#: what an uploaded model can cause besides an input error, and what we say about it: our own
#: words, never the exception's (a message such as "Config file not found: /etc/config.json"
#: would tell a client which files exist on the server)
MODEL_FAILURES: dict[str, str] = {
    "model_out_of_memory": "the model ran out of memory in the sandbox{limit}: a smaller input size or batch, "
                           "or a smaller model, fits",
    "model_load_error": "the checkpoint could not be loaded with its card: check the format, the architecture "
                        "and the card's fields (the details were logged)",
    "model_runtime_error": "the model raised an error while it ran (a forward or backward pass; the details were "
                           "logged)",
    "internal_error": "the sandboxed engine failed; the incident was logged",
    "cancelled": "cancelled",
}


def failure_message(code: str, limits: SandboxLimits) -> str:
    """Our message for a failure code of :data:`MODEL_FAILURES`."""
    limit = f" (address-space limit {limits.memory_mb} MB)" if limits.memory_mb else ""
    return MODEL_FAILURES[code].replace("{limit}", limit)


def check_upload(config: Config, path: Path, card: dict[str, Any], *, kind: ModelKind,
                 filename: str) -> dict[str, Any]:
    """Load and probe an upload in the sandbox, within ``config.upload_check_s``.

    Returns what the child reports about the model (parameter count, generator layers, ...).
    """
    name = file_name(filename, "checkpoint" + (path.suffix if _SUFFIX.match(path.suffix) else ""))
    op = "check_generator" if kind is ModelKind.GENERATOR else "check_model"
    job = SandboxJob(op, {"checkpoint": name, "card": card}, inputs={name: path})
    sandbox = make_sandbox(config, wall_s=config.upload_check_s, rss_mb=config.upload_check_memory_mb or None)
    return run_job(sandbox, job)
