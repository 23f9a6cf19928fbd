"""Audit log retention: every hour, each tenant's records older than its audit_retention_days
are deleted; failures are logged and retried on the next pass, never fatal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from aiohttp import web

from app import audit
from app.accounts import tenant_by_name
from app.clock import Clock, pause
from app.db import Database
from app.tenant_settings import load_settings

_LOG = logging.getLogger(__name__)
PRUNE_INTERVAL_S = 3600.0
# The first pass waits this long after start, so a restarting instance serves first.
FIRST_PASS_S = 60.0


async def prune_pass(db: Database, tenants: Sequence[str], clock: Clock) -> dict[str, int]:
    """Prune each tenant's audit log to its retention once; tenant -> records deleted (a
    tenant that failed is logged and left out)."""
    deleted: dict[str, int] = {}
    for name in tenants:
        try:
            tenant = await tenant_by_name(db, name)
            if tenant is None:
                continue
            settings = await load_settings(db, tenant.id)
            count = await audit.prune(db, tenant.id, settings.audit_retention_days, clock)
        except Exception:  # noqa: BLE001 - one tenant's failure must not stop the others
            _LOG.exception("audit retention failed for tenant %s", name)
            continue
        deleted[name] = count
        if count:
            _LOG.info("audit retention deleted %d records of tenant %s", count, name)
    return deleted


class AuditRetention:
    """The hourly pruning task of one app, started and stopped with it."""

    def __init__(
        self,
        db: Database,
        tenants: Sequence[str],
        clock: Clock,
        serving: Callable[[], bool] = lambda: True,
    ) -> None:
        self._db = db
        self._tenants = tuple(tenants)
        self._clock = clock
        self._serving = serving
        self._task: asyncio.Task[None] | None = None

    async def start(self, app: web.Application) -> None:
        """aiohttp on_startup hook."""
        self._task = asyncio.create_task(self._run(), name="audit-retention")

    async def stop(self, app: web.Application) -> None:
        """aiohttp on_cleanup hook: cancel the task and wait for it."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        await pause(FIRST_PASS_S)
        while True:
            if self._serving():  # an instance without its lease leaves the data alone
                await prune_pass(self._db, self._tenants, self._clock)
            await pause(PRUNE_INTERVAL_S)
