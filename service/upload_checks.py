"""A bounded pool of upload checks, shared by every API process through the job store.

Each upload's sandboxed check costs a CPU and about 750 MB for up to ``ROBUSTAUDIT_UPLOAD_CHECK_S``,
so at most ``ROBUSTAUDIT_UPLOAD_CHECKS`` run at once; the others wait in line, oldest first. A check
that waits longer than ``ROBUSTAUDIT_UPLOAD_QUEUE_S`` is refused (503 ``upload_queue_full`` with
Retry-After). A tenant holds at most its ``max_upload_checks`` places (waiting or running) at once;
one more is a 429 ``tenant_limit``.

The pool is the table ``upload_checks``: a row per check, whose unique ``slot`` (0 .. n-1) is set
when it runs. Taking a slot is an UPDATE that the unique constraint makes exclusive; a row past
its ``expires_at`` (its process died) is removed by the next one that looks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from .store import Store
from .store.models import UploadCheck, utcnow
from .tenant_limits import TenantLimits
from .tenants import TenantLimitExceeded, lock_tenant

#: how often a waiting check looks for a free slot
POLL_S = 0.1
#: a slot is kept this much longer than the check's own time limit (the sandbox's kill and clean-up)
MARGIN_S = 30.0


class UploadQueueFull(Exception):
    """The check waited ``waited_s`` for a slot without getting one; ``retry_after_s``: try again then."""

    def __init__(self, waited_s: float, retry_after_s: float) -> None:
        super().__init__(f"no upload check slot after {waited_s:g} s")
        self.waited_s, self.retry_after_s = waited_s, retry_after_s


class UploadCheckPool:
    """The pool.

    Args:
        store: the job store (the table ``upload_checks``).
        slots: checks that run at once, across every API process.
        wait_s: the longest a check waits for a slot.
        check_s: a check's own time limit (how long a slot can be held).
    """

    def __init__(self, store: Store, *, slots: int, wait_s: float, check_s: float) -> None:
        self.store, self.slots, self.wait_s, self.check_s = store, max(1, slots), wait_s, check_s

    @contextmanager
    def turn(self, tenant: str, limits: TenantLimits) -> Iterator[None]:
        """Wait for a slot and hold it while the block runs.

        Raises:
            TenantLimitExceeded: the tenant holds ``max_upload_checks`` places already.
            UploadQueueFull: no slot came free within ``wait_s``.
        """
        row = self._join(tenant, limits)
        try:
            self._wait(row)
            yield
        finally:
            with self.store.session() as s:
                s.execute(delete(UploadCheck).where(UploadCheck.id == row))

    def _join(self, tenant: str, limits: TenantLimits) -> str:
        """Our row in the line, after the tenant's count (under its lock)."""
        now = utcnow()
        with self.store.session() as s:
            s.execute(delete(UploadCheck).where(UploadCheck.expires_at < now))
            lock_tenant(s, tenant)
            held = int(s.scalar(select(func.count()).select_from(UploadCheck)
                                .where(UploadCheck.tenant == tenant)) or 0)
            if held >= limits.max_upload_checks:
                raise TenantLimitExceeded(
                    "max_upload_checks", limits.max_upload_checks, held, self.wait_s / 2 + self.check_s / 4,
                    f"tenant limit: {held} uploads being checked, at most {limits.max_upload_checks} at once; "
                    "try again when one has finished")
            row = UploadCheck(tenant=tenant, created_at=now,
                              expires_at=now + timedelta(seconds=self.wait_s + MARGIN_S))
            s.add(row)
            s.flush()
            return row.id

    def _wait(self, row: str) -> None:
        deadline = time.monotonic() + self.wait_s
        while True:
            if self._take(row):
                return
            if time.monotonic() >= deadline:
                raise UploadQueueFull(self.wait_s, self.check_s / self.slots)
            time.sleep(POLL_S)

    def _take(self, row: str) -> bool:
        """Take a free slot if no older check is waiting for the free ones."""
        now = utcnow()
        with self.store.session() as s:
            s.execute(delete(UploadCheck).where(UploadCheck.expires_at < now))
            me = s.get(UploadCheck, row)
            if me is None:  # expired meanwhile (this process was stopped for a long time)
                raise UploadQueueFull(self.wait_s, self.check_s / self.slots)
            taken = set(s.scalars(select(UploadCheck.slot).where(UploadCheck.slot.is_not(None))))
            free = [k for k in range(self.slots) if k not in taken]
            older = int(s.scalar(select(func.count()).select_from(UploadCheck).where(
                UploadCheck.slot.is_(None),
                (UploadCheck.created_at < me.created_at)
                | ((UploadCheck.created_at == me.created_at) & (UploadCheck.id < me.id)))) or 0)
        if older >= len(free):
            return False
        for slot in free:
            try:
                with self.store.session() as s:
                    s.execute(update(UploadCheck).where(UploadCheck.id == row).values(
                        slot=slot, expires_at=utcnow() + timedelta(seconds=self.check_s + MARGIN_S)))
                return True
            except IntegrityError:  # another process took it first
                continue
        return False
