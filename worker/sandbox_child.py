"""The process inside the sandbox: ``python -m worker.sandbox_child FD``.

It reads one job (one JSON line) from stdin, lowers its own resource limits before it reads
any model file, runs the job with the engine and writes JSON lines to file descriptor FD:
``{"progress": {"suite": s, "fraction": f}}`` while it runs, then ``{"result": ...}`` or
``{"error": {"code", "message", "details"}}``, with ``"warnings": n`` beside either: how many
warnings the model raised, counted and never kept. An engine input error keeps its own code and
message; any other exception is sent as a code only (``model_out_of_memory``,
``model_load_error``, ``model_runtime_error`` or ``internal_error``, with ``"unexpected": true``)
and its traceback goes to stderr, which the parent logs: the message a client sees is ours.

An audit whose payload has ``"claims": true`` shares its shards with other workers: before
each shard that is not in the checkpoint folder it sends ``{"claim": {"suite", "shard", "of",
"key"}}`` and, before the merge, ``{"claim": {"finalize": true, "keys": [...]}}``; it waits for
one answer line ``{"granted": bool}`` on stdin per claim (no answer in time, or anything else,
is a refusal). Its result is then the report, or ``{"incomplete": true, "ran", "missing"}``.
Ops:

- ``check_model``: load and probe a classifier (the upload check);
- ``check_generator``: load and probe a generator;
- ``audit``: run an audit; the report is also written to ``out/report.json``.

File names in the job are relative to the working directory, where the sandbox binds the
inputs read-only, so messages and reports name files, never server paths.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import select
import sys
import time
import traceback
import warnings
from typing import IO, Any

MAX_JOB_BYTES = 16 * 1024 * 1024
#: an answer is ``{"granted": true}``; anything longer is not one
MAX_ANSWER_BYTES = 1024
#: how long a claim waits for its answer before it counts as refused
ANSWER_TIMEOUT_S = 300.0


def set_limits(limits: dict[str, Any]) -> None:
    """Soft and hard limits together: without capabilities they cannot be raised again."""

    def cap(which: int, value: int) -> None:
        soft, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))

    if limits.get("memory_mb"):
        cap(resource.RLIMIT_AS, int(limits["memory_mb"]) << 20)
    cap(resource.RLIMIT_CPU, int(limits["cpu_s"]))
    cap(resource.RLIMIT_FSIZE, int(limits["file_mb"]) << 20)
    cap(resource.RLIMIT_NOFILE, int(limits["open_files"]))
    cap(resource.RLIMIT_CORE, 0)


class LineReader:
    """Bounded lines from a file descriptor (stdin): the job first, then one answer per claim."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer, self.eof = fd, b"", False

    def line(self, limit: int, timeout_s: float | None = None) -> bytes | None:
        """The next line without its newline; None at end of input, past ``limit`` bytes or the timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            if len(self.buffer) > limit:
                return None
            if self.eof:  # a last line without its newline still counts
                line, self.buffer = self.buffer, b""
                return line or None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    return None
            chunk = os.read(self.fd, 1 << 20)
            self.eof = not chunk
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line if len(line) <= limit else None


class Channel:
    """JSON lines to the parent; with ``answers``, claims it answers one line each."""

    def __init__(self, stream: IO[str], answers: LineReader | None = None) -> None:
        self.stream, self.answers = stream, answers

    def send(self, message: dict[str, Any]) -> None:
        self.stream.write(json.dumps(message, default=str) + "\n")
        self.stream.flush()

    def ask(self, claim: dict[str, Any]) -> bool:
        """Send a claim and wait for its answer: only ``{"granted": true}`` grants it."""
        self.send({"claim": claim})
        line = self.answers.line(MAX_ANSWER_BYTES, ANSWER_TIMEOUT_S) if self.answers is not None else None
        try:
            answer = json.loads(line) if line is not None else None
        except ValueError:
            return False
        return isinstance(answer, dict) and answer.get("granted") is True


def run_job(job: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """The op's result (JSON data); engine input errors propagate."""
    op, payload = job["op"], job["payload"]
    for name in payload.get("plugins") or ():  # the operator's suites (ROBUSTAUDIT_PLUGINS), not the client's
        importlib.import_module(name)
    if op == "check_model":
        from worker.engine.models import load_classifier

        clf = load_classifier(payload["checkpoint"], payload["card"], device="cpu")
        return {"model": clf.describe()}
    if op == "check_generator":
        from worker.engine.generators.loading import load_generator

        gen = load_generator(payload["checkpoint"], payload["card"], device="cpu")
        return {"generator": gen.describe()}
    if op == "audit":
        from worker.engine.checkpoints import DirectoryCheckpoints
        from worker.engine.datasets import DataRoots
        from worker.engine.runner import run_audit
        from worker.engine.spec import AuditSpec

        def progress(suite: str, fraction: float) -> None:
            channel.send({"progress": {"suite": suite, "fraction": fraction}})

        spec = AuditSpec.from_dict(payload["spec"])
        checkpoints = DirectoryCheckpoints(job["checkpoints"]) if job.get("checkpoints") else None
        shared = payload.get("claims") is True
        return run_audit(spec, job["out"], on_progress=progress, roots=DataRoots(payload["data_roots"]),
                         shard_size=payload.get("shard_size"), checkpoints=checkpoints,
                         claim=(lambda c: channel.ask(c.to_dict())) if shared else None,
                         finalize=(lambda keys: channel.ask({"finalize": True, "keys": keys})) if shared else None)
    raise ValueError(f"unknown sandbox op {op!r}")


class WarningCounter:
    """Counts the warnings raised while a model runs (TorchScript's ``aten::warn`` among them) and
    keeps none of their text: a model that warns with megabytes, in a loop, costs nothing."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> None:
        warnings.simplefilter("always")  # every call reaches showwarning, which only counts it
        warnings.showwarning = self.show

    def show(self, *args: Any, **kwargs: Any) -> None:
        self.count += 1


#: the error codes of what an uploaded model causes, beside the engine's own input errors; the
#: parent writes the messages (service/sandboxing.py): nothing of the exception's text is sent
OUT_OF_MEMORY, LOAD_ERROR, RUNTIME_ERROR = "model_out_of_memory", "model_load_error", "model_runtime_error"
#: where in a traceback loading happens (our loaders) and where a model runs (torch)
_LOADERS = (f"{os.sep}worker{os.sep}engine{os.sep}models{os.sep}",
            f"{os.sep}worker{os.sep}engine{os.sep}generators{os.sep}")
_TORCH = f"{os.sep}torch{os.sep}"


def failure_code(exc: BaseException, op: str) -> str:
    """The code of an exception that is not one of the engine's input errors: out of memory (torch
    raises RuntimeError for it, not MemoryError), a load error (in a check, or raised inside our
    loaders), a runtime error (raised inside torch while the model ran), else ``internal_error``."""
    from worker.engine.models.messages import is_out_of_memory

    if is_out_of_memory(exc) or getattr(exc, "code", None) == OUT_OF_MEMORY:
        return OUT_OF_MEMORY
    if op in ("check_model", "check_generator"):
        return LOAD_ERROR
    files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(exc.__traceback__)]
    if any(loader in f for f in files for loader in _LOADERS):
        return LOAD_ERROR
    if any(_TORCH in f for f in files) or type(exc).__module__.startswith("torch"):
        return RUNTIME_ERROR
    return "internal_error"


def main(argv: list[str]) -> int:
    stdin = LineReader(sys.stdin.fileno())
    channel = Channel(os.fdopen(int(argv[1]), "w", encoding="utf-8"), answers=stdin)
    line = stdin.line(MAX_JOB_BYTES)
    if line is None:
        raise SystemExit("no job (one JSON line) on stdin")
    job = json.loads(line)
    set_limits(job["limits"])
    counter = WarningCounter()
    counter.install()
    from worker.engine.errors import AuditInputError

    try:
        result = run_job(job, channel)
    except AuditInputError as exc:
        channel.send({"error": {"code": exc.code, "message": exc.message, "details": exc.details},
                      "warnings": counter.count})
        return 0
    except Exception as exc:  # a hostile model, or a bug: a code; the text goes to stderr (the operator's log)
        code = failure_code(exc, str(job.get("op")))
        traceback.print_exc(limit=8)
        channel.send({"error": {"code": code, "message": code, "unexpected": True}, "warnings": counter.count})
        return 0 if code != "internal_error" else 1
    channel.send({"result": result, "warnings": counter.count})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
