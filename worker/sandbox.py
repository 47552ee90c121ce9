"""Run untrusted models in a sandbox: a separate process under bubblewrap.

Every load, forward and backward pass of an uploaded model happens in a child process
(:mod:`worker.sandbox_child`) that bubblewrap starts with

- no network (new network namespace), no view of other processes (new PID namespace),
  no capabilities, a new session (no terminal), and death with its parent;
- the filesystem read-only; ``/tmp``, ``/run``, the service's home and storage and the
  home directories hidden behind empty tmpfs mounts (so no database file, broker socket,
  other tenant's checkpoint or credential file is visible); the code and the interpreter
  bound back read-only; the job's own input files bound read-only under ``/tmp/in``, and
  only its output and checkpoint folders writable;
- an empty environment apart from a few variables we set (no tokens, no database URL);
- resource limits it sets on itself before it reads any file (address space, file size,
  CPU time, open files, no core dumps), which it cannot raise again without capabilities.

The child reports progress and its result as JSON lines on a pipe; its output is bounded
and parsed as untrusted data. An audit shared with other workers also sends claims there
(a shard it would run, then the merge), each answered by one line ``{"granted": bool}`` on
its stdin, which then stays open; claims are validated and bounded in number like the rest.
If bubblewrap cannot start, untrusted models are refused
(``SandboxUnavailable``) unless the setting ``ROBUSTAUDIT_SANDBOX=off`` explicitly allows
the unsandboxed child (same protocol and limits, no namespaces): for a developer's machine.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

#: where the job's files appear inside the sandbox
SANDBOX_IN, SANDBOX_OUT, SANDBOX_CHECKPOINTS = "/tmp/in", "/tmp/out", "/tmp/checkpoints"
#: the largest line the child may send (a report is well below this)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: the most claims one child may send (an audit's shards, all suites, and its merge)
MAX_CLAIMS = 4096
#: the longest suite name or shard key a claim may carry
MAX_CLAIM_FIELD = 256
#: variables passed through to the child: thread counts and device selection, never secrets
_PASS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
             "OPENBLAS_L2_SIZE", "CUDA_VISIBLE_DEVICES", "LANG", "LC_ALL", "TZ")


class SandboxMode(str, Enum):
    BWRAP = "bwrap"
    OFF = "off"  # an explicit opt-out: the child runs without namespaces (a developer's own files)


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create its namespaces here; untrusted models are refused."""


class SandboxFailed(RuntimeError):
    """The child died, timed out or sent something we cannot read; the message says which.

    Args:
        message: what happened, in words for the audit's error.
        code: an error code for the API and the audit record.
    """

    def __init__(self, message: str, code: str = "sandbox_failed") -> None:
        super().__init__(message)
        self.message, self.code = message, code


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed process.

    Args:
        memory_mb: address-space limit (RLIMIT_AS); None for none (CUDA maps far more
            address space than it uses, so the GPU path relies on the container's limit).
        cpu_s: CPU seconds (all threads together).
        wall_s: wall-clock seconds before the parent kills it.
        file_mb: largest file it may write.
        open_files: file descriptors.
        rss_mb: resident memory of the child and its descendants, watched by the parent, which
            kills them above it (None: not watched). Unlike the address space it counts only
            memory really used, so it can be far tighter.
    """

    memory_mb: int | None = 8192
    cpu_s: int = 24 * 3600
    wall_s: float = 6 * 3600.0
    file_mb: int = 4096
    open_files: int = 1024
    rss_mb: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"memory_mb": self.memory_mb, "cpu_s": self.cpu_s, "file_mb": self.file_mb,
                "open_files": self.open_files}


@dataclass
class SandboxJob:
    """One job for the child.

    Args:
        op: ``check_model``, ``check_generator`` or ``audit`` (see :mod:`worker.sandbox_child`).
        payload: the op's arguments (JSON); file names in it are names in ``inputs``.
        inputs: name inside the sandbox -> host file, bound read-only.
        output_dir: host folder the child may write (the audit's folder), or None.
        checkpoint_dir: host folder for shard checkpoints, or None.
        data_roots: host folders datasets may be read from, bound read-only at the same path.
        gpu: bind the NVIDIA device files.
    """

    op: str
    payload: dict[str, Any]
    inputs: dict[str, Path] = field(default_factory=dict)
    output_dir: Path | None = None
    checkpoint_dir: Path | None = None
    data_roots: tuple[Path, ...] = ()
    gpu: bool = False


@dataclass
class SandboxResult:
    """What the child sent: its final message (``result`` or ``error``) and how it exited."""

    result: dict[str, Any] | None
    error: dict[str, Any] | None
    returncode: int


def _code_paths() -> list[Path]:
    """What the child must see to run our code: the interpreter, site-packages and the repository."""
    import worker

    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent,
             Path(worker.__file__).resolve().parent.parent}
    paths.update(Path(p) for p in sys.path if p and Path(p).is_dir())
    return sorted(p.resolve() for p in paths)


def _hidden_paths(extra: tuple[Path, ...]) -> list[Path]:
    """Folders replaced by an empty tmpfs: where secrets, sockets and other tenants' files live."""
    candidates = [Path("/tmp"), Path("/var/tmp"), Path("/run"), Path("/root"), Path("/home"),
                  Path("/var/lib/postgresql"), Path("/var/lib/redis"), *extra]
    out: list[Path] = []
    for p in candidates:
        try:
            real = p.resolve()
        except OSError:
            continue
        if real.is_dir() and real != Path("/") and real not in out:
            out.append(real)
    # a parent before its children, so a child's tmpfs is not hidden again by its parent's
    return sorted(out, key=lambda q: len(q.parts))


def bwrap_command(job: SandboxJob, message_fd: int, *, hide: tuple[Path, ...] = ()) -> list[str]:
    """The bubblewrap command line for ``job`` (the child's argv at its end)."""
    cmd = ["bwrap", "--die-with-parent", "--new-session", "--unshare-all", "--clearenv",
           "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    if os.geteuid() == 0:
        cmd += ["--cap-drop", "ALL"]
    hidden = _hidden_paths(hide)
    shown = [p for p in (*_code_paths(), *(Path(r).resolve() for r in job.data_roots))
             if p not in hidden and p != Path("/")]  # (a script's own folder on sys.path may be /tmp itself)
    # Shallower paths first, so each mount lands on top of its parent's: the code under a hidden
    # /tmp comes back, and the service home inside a code folder (./var) stays hidden, which a
    # bind of the whole folder made after its tmpfs would undo.
    mounts = sorted([(p, "--tmpfs") for p in hidden] + [(p, "--ro-bind-try") for p in dict.fromkeys(shown)],
                    key=lambda m: (len(m[0].parts), m[1] == "--tmpfs"))
    for path, how in mounts:
        cmd += [how, str(path)] if how == "--tmpfs" else [how, str(path), str(path)]
    cmd += ["--dir", SANDBOX_IN]
    for name, src in sorted(job.inputs.items()):
        cmd += ["--ro-bind", str(src), f"{SANDBOX_IN}/{name}"]
    if job.output_dir is not None:
        cmd += ["--bind", str(job.output_dir), SANDBOX_OUT]
    if job.checkpoint_dir is not None:
        cmd += ["--bind", str(job.checkpoint_dir), SANDBOX_CHECKPOINTS]
    if job.gpu:
        for dev in sorted(Path("/dev").glob("nvidia*")):
            cmd += ["--dev-bind-try", str(dev), str(dev)]
    for key, value in _child_env().items():
        cmd += ["--setenv", key, value]
    cmd += ["--chdir", SANDBOX_IN, "--", *child_argv(message_fd)]
    return cmd


def limit_prefix(limits: SandboxLimits) -> list[str]:
    """``prlimit`` with the limits, set before the sandbox starts (the child sets them again
    itself, which also covers a machine without util-linux's prlimit)."""
    tool = shutil.which("prlimit")
    if tool is None:
        return []
    cmd = [tool, f"--cpu={limits.cpu_s}", f"--fsize={limits.file_mb << 20}", f"--nofile={limits.open_files}",
           "--core=0"]
    if limits.memory_mb:
        cmd.append(f"--as={limits.memory_mb << 20}")
    return [*cmd, "--"]


def child_argv(message_fd: int) -> list[str]:
    return [sys.executable, "-m", "worker.sandbox_child", str(message_fd)]


def _child_env() -> dict[str, str]:
    import worker

    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": str(Path(worker.__file__).resolve().parent.parent), "MPLBACKEND": "Agg",
           "MPLCONFIGDIR": "/tmp/mpl", "TORCHINDUCTOR_CACHE_DIR": "/tmp/inductor"}
    env.update({k: os.environ[k] for k in _PASS_ENV if k in os.environ})
    return env


@cache
def bwrap_works() -> str | None:
    """None when bubblewrap can create its namespaces here; else why not (checked once per process)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    probe = ["bwrap", "--die-with-parent", "--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev",
             "--proc", "/proc", "--tmpfs", "/tmp", "--", "/bin/true"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap does not start: {exc}"
    if done.returncode != 0:
        return f"bubblewrap cannot create its namespaces: {done.stderr.decode(errors='replace').strip()[:300]}"
    return None


class Sandbox:
    """Runs :class:`SandboxJob` objects in child processes.

    Args:
        mode: bubblewrap, or off (an explicit opt-out).
        limits: the resource limits of each child.
        hide: more host folders to hide (the service's home and storage).
    """

    def __init__(self, mode: SandboxMode = SandboxMode.BWRAP, limits: SandboxLimits | None = None,
                 hide: tuple[Path, ...] = ()) -> None:
        self.mode, self.limits, self.hide = mode, limits or SandboxLimits(), hide

    def run(self, job: SandboxJob, *, on_message: Callable[[dict[str, Any]], None] | None = None,
            should_stop: Callable[[], bool] | None = None, wall_s: float | None = None,
            on_claim: Callable[[dict[str, Any]], bool] | None = None) -> SandboxResult:
        """Run ``job``; ``on_message`` sees every progress message, ``should_stop`` kills the child.

        ``on_claim`` answers the child's claims (an audit whose payload has ``"claims": True``):
        it gets ``{"suite", "shard", "of", "key"}`` or ``{"finalize": True, "keys": [...]}``,
        validated, each shard key and the merge at most once, and returns whether it is granted.
        Without it the child's stdin is closed after the job, which refuses every claim.

        Raises:
            SandboxUnavailable: bubblewrap cannot run here (and the mode is not off).
            SandboxFailed: the child timed out, was killed by a limit, or sent unreadable output.
        """
        if self.mode is SandboxMode.BWRAP:
            problem = bwrap_works()
            if problem is not None:
                raise SandboxUnavailable(f"{problem}; untrusted models are not run without the sandbox "
                                         "(ROBUSTAUDIT_SANDBOX=off allows it on a developer's machine)")
        wall = wall_s if wall_s is not None else self.limits.wall_s
        with self._staged(job) as (argv_for, cwd, env):
            read_fd, write_fd = os.pipe()
            # stderr to a file: a pipe the child fills while we wait on messages would block it
            with tempfile.TemporaryFile() as errors:
                try:
                    proc = subprocess.Popen(argv_for(write_fd), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                            stderr=errors, pass_fds=(write_fd,), cwd=cwd, env=env,
                                            start_new_session=True)
                except OSError as exc:
                    os.close(read_fd)
                    os.close(write_fd)
                    raise SandboxFailed(f"the sandbox did not start: {exc}") from None
                os.close(write_fd)
                return self._talk(proc, read_fd, errors, job, on_message, should_stop, wall, on_claim)

    @contextmanager
    def _staged(self, job: SandboxJob) -> Iterator[tuple[Callable[[int], list[str]], str | None,
                                                          dict[str, str] | None]]:
        """(argv for a message fd, cwd, env). Off mode links the inputs into a temporary folder."""
        limit = limit_prefix(self.limits)
        if self.mode is SandboxMode.BWRAP:
            yield ((lambda fd: [*limit, *bwrap_command(job, fd, hide=self.hide)]), None,
                   {"PATH": os.environ.get("PATH", "")})
            return
        with tempfile.TemporaryDirectory(prefix="robustaudit-job-") as tmp:
            for name, src in job.inputs.items():
                os.symlink(src, Path(tmp) / name)
            env = {**_child_env(), "HOME": tmp, "MPLCONFIGDIR": str(Path(tmp) / ".mpl"),
                   "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / ".inductor")}
            yield (lambda fd: [*limit, *child_argv(fd)]), tmp, env

    def _paths(self, job: SandboxJob) -> dict[str, str | None]:
        if self.mode is SandboxMode.BWRAP:
            return {"out": SANDBOX_OUT if job.output_dir else None,
                    "checkpoints": SANDBOX_CHECKPOINTS if job.checkpoint_dir else None}
        return {"out": str(job.output_dir) if job.output_dir else None,
                "checkpoints": str(job.checkpoint_dir) if job.checkpoint_dir else None}

    def _talk(self, proc: subprocess.Popen[bytes], read_fd: int, errors: IO[bytes], job: SandboxJob,
              on_message: Callable[[dict[str, Any]], None] | None, should_stop: Callable[[], bool] | None,
              wall: float, on_claim: Callable[[dict[str, Any]], bool] | None = None) -> SandboxResult:
        request = {"op": job.op, "payload": job.payload, "limits": self.limits.as_dict(), **self._paths(job)}
        final: dict[str, Any] = {}
        buffer, eof = b"", False
        deadline = time.monotonic() + wall
        claims = _Claims(proc, on_claim)
        try:
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
                if on_claim is None:
                    proc.stdin.close()
                else:  # answers must never block us: a child that does not read them is refused below
                    os.set_blocking(proc.stdin.fileno(), False)
            except BrokenPipeError:
                pass
            while True:
                if time.monotonic() > deadline:
                    raise SandboxFailed(f"the model did not finish within {wall:g} s", code="sandbox_timeout")
                if should_stop is not None and should_stop():
                    final = {"cancelled": True}
                    break
                if self.limits.rss_mb is not None and tree_rss_mb(proc.pid) > self.limits.rss_mb:
                    raise SandboxFailed(f"the model used more than {self.limits.rss_mb} MB of memory, the "
                                        "sandbox's limit", code="sandbox_limit")
                ready, _, _ = select.select([read_fd], [], [], 0.2)
                if not ready:
                    continue
                chunk = os.read(read_fd, 1 << 20)
                if not chunk:
                    eof = True
                    break
                buffer += chunk
                if len(buffer) > MAX_MESSAGE_BYTES:
                    raise SandboxFailed("the sandboxed process sent more output than allowed")
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    message = _parse(line)
                    if "claim" in message:
                        claims.answer(message["claim"])
                    elif "progress" in message and on_message is not None:
                        on_message(message)
                    elif "result" in message or "error" in message:
                        final = message
        finally:
            os.close(read_fd)
            claims.close()
            _kill(proc, grace_s=10.0 if eof else 0.0)
        errors.seek(max(0, errors.seek(0, os.SEEK_END) - 4000))
        stderr = errors.read().decode(errors="replace")
        if final.get("cancelled"):
            return SandboxResult(None, {"code": "cancelled", "message": "cancelled"}, proc.returncode)
        if "result" in final or "error" in final:
            result, error = final.get("result"), final.get("error")
            if (result is not None and not isinstance(result, dict)) or (error is not None and not _is_error(error)):
                raise SandboxFailed("the sandboxed process sent a malformed result")
            return SandboxResult(result, error, proc.returncode)
        log.warning("sandboxed process failed (status %s); its stderr ends: %s", proc.returncode, stderr[-1000:])
        raise SandboxFailed(_death_message(proc.returncode, stderr, self.limits))


class _Claims:
    """The parent's side of the claim protocol: validate each claim, ask ``on_claim``, answer one line.

    A claim that is malformed, repeats a shard key or the merge, or comes beyond
    :data:`MAX_CLAIMS` fails the run, as does a child that leaves its answers unread until the
    pipe is full: a hostile child can neither flood the caller's store nor block this process.
    """

    def __init__(self, proc: subprocess.Popen[bytes], on_claim: Callable[[dict[str, Any]], bool] | None) -> None:
        self.proc, self.on_claim = proc, on_claim
        self.seen: set[str] = set()
        self.finalized = False

    def answer(self, raw: Any) -> None:
        if self.on_claim is None:
            return  # stdin is closed: the child reads end of input, a refusal
        claim = self._validated(raw)
        granted = bool(self.on_claim(claim))
        assert self.proc.stdin is not None
        try:
            os.write(self.proc.stdin.fileno(), json.dumps({"granted": granted}).encode() + b"\n")
        except BlockingIOError:
            raise SandboxFailed("the sandboxed process sent claims without reading their answers") from None
        except (BrokenPipeError, ValueError):
            pass  # it exited (or closed its stdin): nothing is waiting for the answer

    def _validated(self, raw: Any) -> dict[str, Any]:
        if len(self.seen) + self.finalized >= MAX_CLAIMS:
            raise SandboxFailed(f"the sandboxed process sent more than {MAX_CLAIMS} claims")
        if isinstance(raw, dict) and raw.get("finalize") is True and set(raw) == {"finalize", "keys"}:
            keys = raw["keys"]
            if (self.finalized or not isinstance(keys, list) or not keys or len(keys) > MAX_CLAIMS
                    or not all(_short_str(k) for k in keys) or len(set(keys)) != len(keys)):
                raise SandboxFailed("the sandboxed process sent a malformed or repeated finalize claim")
            self.finalized = True
            return {"finalize": True, "keys": list(keys)}
        if (not isinstance(raw, dict) or set(raw) != {"suite", "shard", "of", "key"}
                or not _short_str(raw["suite"]) or not _short_str(raw["key"])
                or not all(type(raw[k]) is int for k in ("shard", "of")) or not 0 <= raw["shard"] < raw["of"]):
            raise SandboxFailed("the sandboxed process sent a malformed claim")
        if raw["key"] in self.seen:
            raise SandboxFailed("the sandboxed process claimed the same shard twice")
        self.seen.add(raw["key"])
        return {k: raw[k] for k in ("suite", "shard", "of", "key")}

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


def _short_str(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_CLAIM_FIELD


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB (0 for processes that are gone)."""
    total_kb = 0
    for p in _process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
                        break
        except (OSError, ValueError):
            continue
    return total_kb / 1024


def _process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants, parents first."""
    tree, todo, seen = [], [pid], set()
    while todo:
        p = todo.pop(0)
        if p in seen:
            continue
        seen.add(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
        tree.append(p)
    return tree


def _has_exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _parse(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise SandboxFailed("the sandboxed process sent output that is not JSON") from None
    if not isinstance(message, dict):
        raise SandboxFailed("the sandboxed process sent output that is not a JSON object")
    return message


def _is_error(error: Any) -> bool:
    return (isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str)
            and len(error["code"]) <= 64)


def _kill(proc: subprocess.Popen[bytes], grace_s: float = 0.0) -> None:
    """The child and everything it started are gone when this returns.

    bwrap's ``--new-session`` puts the sandboxed process in a session of its own, so the
    process group of ``proc`` does not reach it, and ``--die-with-parent`` only signals it
    some time later: every descendant is killed by pid and waited for, so that nothing it
    still writes (a checkpoint, an artifact) lands after this returns.
    """
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    tree = _process_tree(proc.pid) if proc.poll() is None else []
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()
    deadline = time.monotonic() + 10.0
    while any(not _has_exited(pid) for pid in tree[1:]) and time.monotonic() < deadline:
        time.sleep(0.01)


def _death_message(returncode: int, stderr: str, limits: SandboxLimits) -> str:
    if returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else -returncode
        why = {"SIGXCPU": f"it used more than {limits.cpu_s} s of CPU time",
               "SIGXFSZ": f"it wrote a file larger than {limits.file_mb} MB",
               "SIGKILL": "it was killed (out of memory?)", "SIGSEGV": "it crashed"}.get(str(sig), "")
        return f"the sandboxed model process died of {sig}" + (f": {why}" if why else "")
    tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
    if any("MemoryError" in line or "Cannot allocate memory" in line for line in stderr.splitlines()):
        return f"the model needs more memory than the sandbox allows ({limits.memory_mb} MB)"
    return (f"the sandboxed model process exited with status {returncode} without a result"
            + (f" ({tail[0][:300]})" if tail else ""))
