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
- an unprivileged user (``Sandbox.user``, nobody's 65534:65534 by default): a service running as
  root hands the child to ``setpriv``, which drops to that uid and gid (and every capability)
  before our code starts; otherwise bubblewrap maps it in a user namespace;
- an empty environment apart from a few variables we set (no tokens, no database URL), with the
  Hugging Face libraries told to stay offline;
- resource limits it sets on itself before it reads any file (address space, file size,
  CPU time, open files, no core dumps), which it cannot raise again without capabilities.

The child reports progress and its result as JSON lines on a pipe; its output is bounded
and parsed as untrusted data. Its stderr is a pipe too, read as it comes into a ring buffer of
:data:`STDERR_TAIL_BYTES` (the tail is logged when it fails): a model that prints without end
costs neither memory nor disk. An audit shared with other workers also sends claims there
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
import stat
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
from typing import Any

log = logging.getLogger(__name__)

#: where the job's files appear inside the sandbox
SANDBOX_IN, SANDBOX_OUT, SANDBOX_CHECKPOINTS = "/tmp/in", "/tmp/out", "/tmp/checkpoints"
#: the largest line the child may send (a report is well below this)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: the most claims one child may send (an audit's shards, all suites, and its merge)
MAX_CLAIMS = 4096
#: the longest suite name or shard key a claim may carry
MAX_CLAIM_FIELD = 256
#: how much of the child's stderr is kept (its end): enough for a traceback, never a disk's worth
STDERR_TAIL_BYTES = 256 * 1024
#: the Hugging Face libraries never reach for the Hub (the network namespace is empty anyway)
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1"}
#: the unprivileged uid and gid a sandboxed process runs as by default (nobody, nogroup)
NOBODY = (65534, 65534)
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
    """What the child sent: its final message (``result`` or ``error``) and how it exited.

    Args:
        warnings: how many warnings the model raised (counted by the child, never stored).
        stderr_bytes: how much the child wrote to stderr (only the last :data:`STDERR_TAIL_BYTES` are kept).
    """

    result: dict[str, Any] | None
    error: dict[str, Any] | None
    returncode: int
    warnings: int = 0
    stderr_bytes: int = 0


class StderrTail:
    """The last ``limit`` bytes of a stream, and how many bytes went by."""

    def __init__(self, limit: int = STDERR_TAIL_BYTES) -> None:
        self.limit, self.seen = limit, 0
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        self._buffer += chunk[-self.limit:]
        if len(self._buffer) > self.limit:
            del self._buffer[:len(self._buffer) - self.limit]

    def __len__(self) -> int:
        return len(self._buffer)

    def text(self) -> str:
        return self._buffer.decode(errors="replace")


def code_paths() -> list[Path]:
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


def _traversable_parents(path: Path, hidden: list[Path], made: set[Path]) -> list[str]:
    """``--dir`` options for the folders between a hidden tmpfs and a path bound back below it,
    made 0755 so that the unprivileged child can pass through them (bubblewrap would copy the
    host folders' modes: /root/.pyenv, a 0700 pytest folder under /tmp)."""
    under = [h for h in hidden if path != h and path.is_relative_to(h)]
    if not under:
        return []
    top = max(under, key=lambda h: len(h.parts))
    out: list[str] = []
    for parent in reversed(path.parents):
        if parent.is_relative_to(top) and parent != top and parent not in made:
            made.add(parent)
            out += ["--perms", "0755", "--dir", str(parent)]
    return out


def identity_options(user: tuple[int, int]) -> tuple[list[str], list[str]]:
    """(bubblewrap's namespace and identity options, the argv prefix of the sandboxed command) that
    make the child run as ``user`` (uid, gid) without privileges.

    As root, bubblewrap must not map the child into a user namespace: its uid there maps back to
    root outside, which owns /etc/shadow. It keeps only CAP_SETUID and CAP_SETGID for ``setpriv``,
    which takes the real uid and gid, clears the groups and every capability, and execs our code
    (no_new_privs is set by bubblewrap). As any other user, a user namespace maps ``user`` to the
    service's own unprivileged uid.
    """
    uid, gid = (str(x) for x in user)
    if os.geteuid() != 0:
        return ["--unshare-all", "--unshare-user", "--uid", uid, "--gid", gid], []
    setpriv = shutil.which("setpriv") or "setpriv"
    return (["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
             "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"],
            [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all", "--"])


def bwrap_command(job: SandboxJob, message_fd: int, *, hide: tuple[Path, ...] = (),
                  user: tuple[int, int] = NOBODY, mask: tuple[Path, ...] = ()) -> list[str]:
    """The bubblewrap command line for ``job`` (the child's argv at its end), the child running as
    ``user``. ``mask``: files hidden behind /dev/null (a job store whose folder cannot be hidden)."""
    namespaces, prefix = identity_options(user)
    cmd = ["bwrap", "--die-with-parent", "--new-session", *namespaces, "--clearenv",
           "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    hidden = _hidden_paths(hide)
    shown = [p for p in (*code_paths(), *(Path(r).resolve() for r in job.data_roots))
             if p not in hidden and p != Path("/")]  # (a script's own folder on sys.path may be /tmp itself)
    # Shallower paths first, so each mount lands on top of its parent's: the code under a hidden
    # /tmp comes back, and the service home inside a code folder (./var) stays hidden, which a
    # bind of the whole folder made after its tmpfs would undo.
    mounts = sorted([(p, "--tmpfs") for p in hidden] + [(p, "--ro-bind-try") for p in dict.fromkeys(shown)],
                    key=lambda m: (len(m[0].parts), m[1] == "--tmpfs"))
    made: set[Path] = set()
    for path, how in mounts:
        if how == "--tmpfs" and path == Path("/tmp"):
            cmd += ["--perms", "1777"]  # the child's own scratch space, whoever it runs as
        if how != "--tmpfs":
            cmd += _traversable_parents(path, hidden, made)
        cmd += [how, str(path)] if how == "--tmpfs" else [how, str(path), str(path)]
    for path in mask:
        if path.is_file():  # (a file that does not exist yet cannot be a mount point on a read-only /)
            cmd += ["--ro-bind", "/dev/null", str(path)]
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
    cmd += ["--chdir", SANDBOX_IN, "--", *prefix, *child_argv(message_fd)]
    return cmd


def grant_access(job: SandboxJob, user: tuple[int, int]) -> None:
    """When the service is root and the child runs as ``user``: the folders the child writes are
    given to ``user``, and its input files made readable by others (an upload is stored 0600 by
    older versions). Data roots must be readable by others already (docs/security.md)."""
    if os.geteuid() != 0:
        return
    for folder in (job.output_dir, job.checkpoint_dir):
        if folder is not None:
            os.chown(folder, *user, follow_symlinks=False)
    for src in job.inputs.values():
        mode = os.stat(src).st_mode
        if not mode & stat.S_IROTH:
            os.chmod(src, stat.S_IMODE(mode) | stat.S_IRGRP | stat.S_IROTH)


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
    env.update(OFFLINE_ENV)
    return env


@cache
def bwrap_works() -> str | None:
    """None when bubblewrap can create its namespaces here; else why not (checked once per process)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed: as root, the sandbox needs it to drop to an unprivileged user"
    namespaces, prefix = identity_options(NOBODY)
    probe = ["bwrap", "--die-with-parent", *namespaces, "--ro-bind", "/", "/", "--dev", "/dev",
             "--proc", "/proc", "--tmpfs", "/tmp", "--", *prefix, "/bin/true"]
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
        mode: bubblewrap, or off (an explicit opt-out: the child runs as the service's user).
        limits: the resource limits of each child.
        hide: more host folders to hide (the service's home and storage, the job store's folder).
        user: (uid, gid) the child runs as under bubblewrap: an unprivileged user, never root.
        mask: files hidden behind /dev/null (a job store whose folder cannot be hidden).
    """

    def __init__(self, mode: SandboxMode = SandboxMode.BWRAP, limits: SandboxLimits | None = None,
                 hide: tuple[Path, ...] = (), user: tuple[int, int] = NOBODY, mask: tuple[Path, ...] = ()) -> None:
        if 0 in user:
            raise ValueError("the sandboxed process never runs as uid or gid 0")
        self.mode, self.limits, self.hide, self.user, self.mask = mode, limits or SandboxLimits(), hide, user, mask

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
            if self.mode is SandboxMode.BWRAP:
                grant_access(job, self.user)
            read_fd, write_fd = os.pipe()
            try:
                # stderr is a pipe read in the same loop as the messages, into a bounded tail
                proc = subprocess.Popen(argv_for(write_fd), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, pass_fds=(write_fd,), cwd=cwd, env=env,
                                        start_new_session=True)
            except OSError as exc:
                os.close(read_fd)
                os.close(write_fd)
                raise SandboxFailed(f"the sandbox did not start: {exc}") from None
            os.close(write_fd)
            return self._talk(proc, read_fd, StderrTail(), job, on_message, should_stop, wall, on_claim)

    @contextmanager
    def _staged(self, job: SandboxJob) -> Iterator[tuple[Callable[[int], list[str]], str | None,
                                                          dict[str, str] | None]]:
        """(argv for a message fd, cwd, env). Off mode links the inputs into a temporary folder."""
        limit = limit_prefix(self.limits)
        if self.mode is SandboxMode.BWRAP:
            yield ((lambda fd: [*limit, *bwrap_command(job, fd, hide=self.hide, user=self.user, mask=self.mask)]),
                   None, {"PATH": os.environ.get("PATH", "")})
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

    def _talk(self, proc: subprocess.Popen[bytes], read_fd: int, errors: StderrTail, job: SandboxJob,
              on_message: Callable[[dict[str, Any]], None] | None, should_stop: Callable[[], bool] | None,
              wall: float, on_claim: Callable[[dict[str, Any]], bool] | None = None) -> SandboxResult:
        request = {"op": job.op, "payload": job.payload, "limits": self.limits.as_dict(), **self._paths(job)}
        final: dict[str, Any] = {}
        buffer, eof = b"", False
        deadline = time.monotonic() + wall
        claims = _Claims(proc, on_claim)
        assert proc.stderr is not None
        err_fd = proc.stderr.fileno()
        os.set_blocking(err_fd, False)
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
                ready, _, _ = select.select([read_fd, err_fd], [], [], 0.2)
                if err_fd in ready:
                    _drain(err_fd, errors)
                if read_fd not in ready:
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
            _kill(proc, grace_s=10.0 if eof else 0.0, errors=errors)
            _drain(err_fd, errors)
            proc.stderr.close()
        stderr = errors.text()
        warned = final.get("warnings")
        warned = warned if type(warned) is int and warned >= 0 else 0
        if warned:
            log.info("the sandboxed model raised %d warnings (counted, not kept)", warned)
        if final.get("cancelled"):
            return SandboxResult(None, {"code": "cancelled", "message": "cancelled"}, proc.returncode,
                                 stderr_bytes=errors.seen)
        if "result" in final or "error" in final:
            result, error = final.get("result"), final.get("error")
            if (result is not None and not isinstance(result, dict)) or (error is not None and not _is_error(error)):
                raise SandboxFailed("the sandboxed process sent a malformed result")
            if error is not None and error.get("code") != "cancelled" and stderr:
                log.warning("sandboxed process reported %s; its stderr ends: %s", error["code"][:64], stderr[-2000:])
            return SandboxResult(result, error, proc.returncode, warnings=warned, stderr_bytes=errors.seen)
        log.warning("sandboxed process failed (status %s); its stderr ends: %s", proc.returncode, stderr[-2000:])
        code, message = _death(proc.returncode, stderr, self.limits)
        raise SandboxFailed(message, code=code)


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


def _drain(fd: int, tail: StderrTail) -> None:
    """Read what ``fd`` (non-blocking) holds now into ``tail``."""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            return
        if not chunk:
            return
        tail.feed(chunk)


def _wait(proc: subprocess.Popen[bytes], grace_s: float, errors: StderrTail | None) -> None:
    """Wait up to ``grace_s`` for the child to exit, reading its stderr meanwhile (a child blocked
    on a full stderr pipe could not exit)."""
    deadline = time.monotonic() + grace_s
    while proc.poll() is None and time.monotonic() < deadline:
        if errors is None or proc.stderr is None:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            return
        ready, _, _ = select.select([proc.stderr.fileno()], [], [], min(0.1, max(0.0, deadline - time.monotonic())))
        if ready:
            _drain(proc.stderr.fileno(), errors)


def _kill(proc: subprocess.Popen[bytes], grace_s: float = 0.0, errors: StderrTail | None = None) -> None:
    """The child and everything it started are gone when this returns.

    bwrap's ``--new-session`` puts the sandboxed process in a session of its own, so the
    process group of ``proc`` does not reach it, and ``--die-with-parent`` only signals it
    some time later: every descendant is killed by pid and waited for, so that nothing it
    still writes (a checkpoint, an artifact) lands after this returns.
    """
    _wait(proc, grace_s, errors)
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


#: stderr lines that say the child ran out of memory (Python's, glibc's and torch's CPU allocator's)
_OOM_MARKS = ("MemoryError", "Cannot allocate memory", "can't allocate memory", "out of memory",
              "std::bad_alloc")


def _death(returncode: int, stderr: str, limits: SandboxLimits) -> tuple[str, str]:
    """(code, message) of a child that died without a result. The message is ours: the child's
    own words (its stderr) go to the log only, never to a client."""
    if returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else -returncode
        why = {"SIGXCPU": f"it used more than {limits.cpu_s} s of CPU time",
               "SIGXFSZ": f"it wrote a file larger than {limits.file_mb} MB",
               "SIGKILL": "it was killed (out of memory?)", "SIGSEGV": "it crashed"}.get(str(sig), "")
        return "sandbox_failed", f"the sandboxed model process died of {sig}" + (f": {why}" if why else "")
    if any(mark in stderr for mark in _OOM_MARKS):
        return "model_out_of_memory", (f"the model needs more memory than the sandbox allows "
                                       f"({limits.memory_mb or 'no'} MB address-space limit)")
    return "sandbox_failed", f"the sandboxed model process exited with status {returncode} without a result"
