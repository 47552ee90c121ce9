"""Service configuration: every setting comes from one ``ROBUSTAUDIT_*`` environment variable.

Read once by :meth:`Config.from_env` when a process starts (app factory, worker, beat,
serve); nothing reads the environment at import time. With no variables set, the
embedded default applies: SQLite store and broker and storage under ``./var``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from worker.engine.datasets.roots import default_data_root

from .tenant_limits import LimitsTable, TenantLimitsError

PREFIX = "ROBUSTAUDIT_"


class ConfigError(ValueError):
    """A ``ROBUSTAUDIT_*`` variable has a value we cannot use; the message names it."""


def hash_token(token: str) -> str:
    """Tokens are kept (and may be configured) only as their sha256 hex digest."""
    return hashlib.sha256(token.encode()).hexdigest()


def _tokens(env: Mapping[str, str]) -> dict[str, str]:
    """sha256(token) -> tenant, from ``API_TOKENS`` (tenant:token) and ``API_TOKEN_HASHES`` (tenant:sha256)."""
    out: dict[str, str] = {}
    for var, hashed in (("API_TOKENS", False), ("API_TOKEN_HASHES", True)):
        for item in filter(None, (s.strip() for s in env.get(PREFIX + var, "").split(","))):
            tenant, sep, secret = item.partition(":")
            if not sep or not tenant or not secret:
                raise ConfigError(f"{PREFIX}{var}: expected comma-separated 'tenant:{'sha256' if hashed else 'token'}'"
                                  f" items, got {item.split(':')[0]!r}...")
            if hashed and len(secret) != 64:
                raise ConfigError(f"{PREFIX}{var}: {tenant!r} needs a 64-hex-digit sha256")
            out[secret.lower() if hashed else hash_token(secret)] = tenant
    return out


def _number(env: Mapping[str, str], name: str, default: float, *, allow_zero: bool = False) -> float:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be a number, got {raw!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{PREFIX}{name} must be positive, got {raw!r}")
    return value


def _tenant_limits(env: Mapping[str, str]) -> LimitsTable:
    try:
        return LimitsTable.parse(env.get(PREFIX + "TENANT_LIMITS"))
    except TenantLimitsError as exc:
        raise ConfigError(str(exc)) from None


def _user(env: Mapping[str, str]) -> tuple[int, int]:
    """``uid:gid`` of the sandboxed process (``ROBUSTAUDIT_SANDBOX_USER``, default nobody's 65534:65534)."""
    raw = env.get(PREFIX + "SANDBOX_USER") or "65534:65534"
    uid, sep, gid = raw.partition(":")
    if not (uid.isdigit() and gid.isdigit() and sep) or int(uid) == 0 or int(gid) == 0:
        raise ConfigError(f"{PREFIX}SANDBOX_USER must be 'uid:gid' of an unprivileged user (not 0), got {raw!r}")
    return int(uid), int(gid)


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = env.get(PREFIX + name) or default
    if raw not in choices:
        raise ConfigError(f"{PREFIX}{name} must be one of {list(choices)}, got {raw!r}")
    return raw


@dataclass(frozen=True)
class Config:
    """Everything a service process needs to know.

    Args:
        home: base directory of the embedded default (``ROBUSTAUDIT_HOME``, default ``./var``).
        database_url: SQLAlchemy URL of the job store (default SQLite in ``home``).
        broker_url: Celery broker (default kombu's SQLAlchemy transport on SQLite in ``home``).
        broker_prefix: key prefix on a Redis broker, so several deployments can share one Redis.
        storage_dir: uploads, reports and artifacts (default ``home/storage``).
        data_roots: directories dataset paths may point into (default ``storage_dir/data``).
        token_hashes: sha256(token) -> tenant; empty means open mode, everything is tenant "default".
        max_upload_mb: size limit of a request body (413 beyond it).
        soft_time_limit_s: an audit running longer fails with ``time_limit``.
        heartbeat_s: how often a running audit touches its heartbeat.
        heartbeat_timeout_s: a running audit with an older heartbeat is taken for dead.
        max_attempts: how many times a dead worker's audit is requeued before it fails.
        visibility_timeout_s: Redis redelivers an unacknowledged message after this long.
        beat_interval_s: how often ``robustaudit beat`` ticks (schedules and the reaper).
        redispatch_s: an audit queued and unclaimed this long (or running with a shard whose
            holder died) is sent to the broker again by the beat (``ROBUSTAUDIT_REDISPATCH_S``).
        fanout: how many workers share one audit at most: copies of its task sent at submit
            (``ROBUSTAUDIT_FANOUT``; never more than the audit has shards).
        device: device for audits ("auto", "cpu", "cuda", "cuda:N").
        shard_size: samples per shard; each finished shard is checkpointed, so a killed
            worker's audit resumes from its last finished shard.
        plugins: modules imported by the API and the workers at start, e.g. to register more
            suites in ``worker.engine.suites.SUITES`` (``ROBUSTAUDIT_PLUGINS``, comma-separated).
        sandbox: ``bwrap`` (default: every uploaded model runs under bubblewrap; where it cannot
            start, uploads and audits are refused) or ``off`` (an explicit opt-out for a
            developer's own files) (``ROBUSTAUDIT_SANDBOX``).
        sandbox_memory_mb: address-space limit of a sandboxed process, 0 for none (CUDA
            reserves far more address space than it uses: on GPU workers set 0 and let the
            container limit memory) (``ROBUSTAUDIT_SANDBOX_MEMORY_MB``).
        upload_check_s: wall-clock limit of the sandboxed load-and-probe check of an upload.
        upload_check_memory_mb: resident memory the upload check may use (its process tree is
            killed above it; 0: not watched) (``ROBUSTAUDIT_UPLOAD_CHECK_MEMORY_MB``).
        tenant_limits: each tenant's limits (``ROBUSTAUDIT_TENANT_LIMITS``, :mod:`service.tenants`).
        upload_checks: upload checks that run at once in all the API processes together; the
            others wait in line (``ROBUSTAUDIT_UPLOAD_CHECKS``).
        upload_queue_s: how long an upload check may wait for its turn before it is refused
            with 503 (``ROBUSTAUDIT_UPLOAD_QUEUE_S``).
        fair_half_life_s: the half-life of a tenant's recorded worker time, by which the
            workers choose whose audit runs next (``ROBUSTAUDIT_FAIR_HALF_LIFE_S``).
        sandbox_user: (uid, gid) the sandboxed process runs as (``ROBUSTAUDIT_SANDBOX_USER``).
    """

    home: Path = Path("var")
    database_url: str = ""
    broker_url: str = ""
    broker_prefix: str = ""
    storage_dir: Path = Path("var/storage")
    data_roots: tuple[Path, ...] = ()
    token_hashes: dict[str, str] = field(default_factory=dict)
    max_upload_mb: float = 512.0
    soft_time_limit_s: float = 6 * 3600.0
    heartbeat_s: float = 10.0
    heartbeat_timeout_s: float = 120.0
    max_attempts: int = 3
    visibility_timeout_s: float = 3 * 3600.0
    beat_interval_s: float = 60.0
    redispatch_s: float = 300.0
    fanout: int = 2
    device: str = "auto"
    shard_size: int = 256
    plugins: tuple[str, ...] = ()
    sandbox: str = "bwrap"
    sandbox_memory_mb: int = 8192
    upload_check_s: float = 120.0
    upload_check_memory_mb: int = 1900
    tenant_limits: LimitsTable = field(default_factory=LimitsTable)
    upload_checks: int = 2
    upload_queue_s: float = 60.0
    fair_half_life_s: float = 3600.0
    sandbox_user: tuple[int, int] = (65534, 65534)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        env = os.environ if environ is None else environ
        home = Path(env.get(PREFIX + "HOME") or "var").absolute()
        storage = Path(env.get(PREFIX + "STORAGE_DIR") or home / "storage").absolute()
        roots = tuple(Path(p).absolute() for p in env.get(PREFIX + "DATA_ROOTS", "").split(os.pathsep) if p.strip())
        cfg = cls(
            home=home,
            database_url=env.get(PREFIX + "DATABASE_URL") or f"sqlite:///{home / 'store.sqlite'}",
            broker_url=env.get(PREFIX + "BROKER_URL") or f"sqla+sqlite:///{home / 'broker.sqlite'}",
            broker_prefix=env.get(PREFIX + "BROKER_PREFIX", ""),
            storage_dir=storage,
            data_roots=roots or (default_data_root(env),),  # the engine's own default
            token_hashes=_tokens(env),
            max_upload_mb=_number(env, "MAX_UPLOAD_MB", 512.0),
            soft_time_limit_s=_number(env, "SOFT_TIME_LIMIT_S", 6 * 3600.0),
            heartbeat_s=_number(env, "HEARTBEAT_S", 10.0),
            heartbeat_timeout_s=_number(env, "HEARTBEAT_TIMEOUT_S", 120.0),
            max_attempts=int(_number(env, "MAX_ATTEMPTS", 3)),
            visibility_timeout_s=_number(env, "VISIBILITY_TIMEOUT_S", 3 * 3600.0),
            beat_interval_s=_number(env, "BEAT_INTERVAL_S", 60.0),
            redispatch_s=_number(env, "REDISPATCH_S", 300.0),
            fanout=int(_number(env, "FANOUT", 2)),
            device=env.get(PREFIX + "DEVICE") or "auto",
            shard_size=int(_number(env, "SHARD_SIZE", 256)),
            plugins=tuple(p.strip() for p in env.get(PREFIX + "PLUGINS", "").split(",") if p.strip()),
            sandbox=_choice(env, "SANDBOX", ("bwrap", "off"), "bwrap"),
            sandbox_memory_mb=int(_number(env, "SANDBOX_MEMORY_MB", 8192, allow_zero=True)),
            upload_check_s=_number(env, "UPLOAD_CHECK_S", 120.0),
            upload_check_memory_mb=int(_number(env, "UPLOAD_CHECK_MEMORY_MB", 1900, allow_zero=True)),
            tenant_limits=_tenant_limits(env),
            upload_checks=int(_number(env, "UPLOAD_CHECKS", 2)),
            upload_queue_s=_number(env, "UPLOAD_QUEUE_S", 60.0),
            fair_half_life_s=_number(env, "FAIR_HALF_LIFE_S", 3600.0),
            sandbox_user=_user(env),
        )
        return replace(cfg, **overrides)

    @property
    def open_mode(self) -> bool:
        """No tokens configured: the embedded default, one tenant, no authentication."""
        return not self.token_hashes

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def as_env(self) -> dict[str, str]:
        """This configuration as ``ROBUSTAUDIT_*`` variables, for child processes."""
        env = {
            "HOME": str(self.home), "DATABASE_URL": self.database_url, "BROKER_URL": self.broker_url,
            "BROKER_PREFIX": self.broker_prefix, "STORAGE_DIR": str(self.storage_dir),
            "DATA_ROOTS": os.pathsep.join(map(str, self.data_roots)),
            "API_TOKEN_HASHES": ",".join(f"{t}:{h}" for h, t in self.token_hashes.items()),
            "MAX_UPLOAD_MB": repr(self.max_upload_mb), "SOFT_TIME_LIMIT_S": repr(self.soft_time_limit_s),
            "HEARTBEAT_S": repr(self.heartbeat_s), "HEARTBEAT_TIMEOUT_S": repr(self.heartbeat_timeout_s),
            "MAX_ATTEMPTS": str(self.max_attempts), "VISIBILITY_TIMEOUT_S": repr(self.visibility_timeout_s),
            "BEAT_INTERVAL_S": repr(self.beat_interval_s), "REDISPATCH_S": repr(self.redispatch_s),
            "FANOUT": str(self.fanout), "DEVICE": self.device,
            "SHARD_SIZE": str(self.shard_size),
            "PLUGINS": ",".join(self.plugins), "SANDBOX": self.sandbox,
            "SANDBOX_MEMORY_MB": str(self.sandbox_memory_mb), "UPLOAD_CHECK_S": repr(self.upload_check_s),
            "UPLOAD_CHECK_MEMORY_MB": str(self.upload_check_memory_mb),
            "TENANT_LIMITS": self.tenant_limits.to_json(), "UPLOAD_CHECKS": str(self.upload_checks),
            "UPLOAD_QUEUE_S": repr(self.upload_queue_s), "FAIR_HALF_LIFE_S": repr(self.fair_half_life_s),
            "SANDBOX_USER": "{}:{}".format(*self.sandbox_user),
        }
        return {PREFIX + k: v for k, v in env.items()}


def load_plugins(config: Config) -> None:
    """Import the configured plugin modules (idempotent: Python imports a module once)."""
    import importlib

    for name in config.plugins:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"{PREFIX}PLUGINS: cannot import {name!r}: {exc}") from None
