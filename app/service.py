"""The hosted app's HTTP surface: health and readiness, per-tenant pages by Host header,
instance headers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from app import pages, web_api, web_pages
from app.access import NETWORK_ACCESS, NetworkAccess
from app.api_headers import secure_api_response
from app.audit_retention import AuditRetention
from app.client_address import TRUSTED_PROXIES, parse_networks
from app.clock import Clock, SystemClock
from app.db import Database, DatabaseError
from app.fence import GateStatus, RequestGate
from app.settings import AppSettings
from app.settings_cache import SETTINGS_CACHE

# HTML responses load nothing external; inline CSS is the only thing they need.
_HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}
# A refused tenant request: try again shortly (the lease may come back, or the edge moves on).
_NOT_SERVING_HEADERS = {**_HTML_HEADERS, "Retry-After": "1", "X-Moonwatch-Serving": "no"}
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
# Answered whether or not this instance holds its lease: they describe the process, not a tenant.
PROBE_PATHS = frozenset({HEALTH_PATH, READY_PATH})
# A readiness probe that waits longer than this for the database reports it unavailable.
READY_TIMEOUT_S = 2.0


def host_name(host_header: str) -> str:
    """Host header to a bare name: drop a ``:port`` and one trailing dot; keep case."""
    name, colon, port = host_header.rpartition(":")
    if colon and port.isdigit():
        host_header = name
    return host_header.removesuffix(".")


def tenant_for_host(host_header: str, base_domain: str, tenants: tuple[str, ...]) -> str | None:
    """Return the tenant ``<tenant>.<base_domain>`` names, or None if it names none of ours."""
    name = host_name(host_header)
    if not name.isascii():
        return None
    label, dot, domain = name.lower().partition(".")
    if dot and domain == base_domain and label in tenants:
        return label
    return None


def _html(text: str, status: int, headers: Mapping[str, str] = _HTML_HEADERS) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", headers=headers)


class _AlwaysServing:
    """The gate of an app built without one: serves every request."""

    def admit(self) -> bool:
        return True

    def status(self) -> GateStatus:
        return GateStatus(serving=True, lease_remaining_s=None)


class _Site:
    """Request handlers and hooks bound to one instance's settings."""

    def __init__(
        self, settings: AppSettings, started_at: float, gate: RequestGate, db: Database | None
    ) -> None:
        self._settings = settings
        self._gate = gate
        self._db = db
        self._started_at = started_at
        self._pid = os.getpid()
        self._instance_headers = {
            "X-Moonwatch-Slot": settings.slot,
            "X-Moonwatch-Server": settings.server,
            "X-Moonwatch-Epoch": str(settings.epoch),
        }

    def _tenant(self, request: web.Request) -> str | None:
        # Read the header itself: request.host falls back to a blocking getfqdn() without one.
        host = request.headers.get(hdrs.HOST, "")
        return tenant_for_host(host, self._settings.base_domain, self._settings.tenants)

    async def healthz(self, request: web.Request) -> web.Response:
        s = self._settings
        gate = self._gate.status()
        return web.json_response(
            {
                "status": "ok",
                "slot": s.slot,
                "server": s.server,
                "epoch": s.epoch,
                "pid": self._pid,
                "tenants": list(s.tenants),
                "started_at": self._started_at,
                "serving": gate.serving,
                "lease_remaining_s": gate.lease_remaining_s,
            }
        )

    async def readyz(self, request: web.Request) -> web.Response:
        """200 when the database answers ``SELECT 1`` within READY_TIMEOUT_S, else 503 and why."""
        if self._db is None:
            return _unready("no database is configured")
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await self._db.fetchval("SELECT 1")
        except TimeoutError:
            return _unready(f"the database did not answer within {READY_TIMEOUT_S:g} s")
        except DatabaseError as exc:
            return _unready(f"the database is unavailable: {exc}")
        return web.json_response({"status": "ready", "database": self._db.dialect})

    @web.middleware
    async def fence_tenant_requests(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        """Refuse every request but the probes, before any other work, unless serving now."""
        if request.path in PROBE_PATHS or self._gate.admit():
            return await handler(request)
        return _html(pages.not_serving(), 503, _NOT_SERVING_HEADERS)

    @web.middleware
    async def not_found_pages(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Turn every 404 (ours or the router's) into the tenant-aware HTML page."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            tenant = self._tenant(request)
            if tenant is None:
                host = host_name(request.headers.get(hdrs.HOST, ""))
                return _html(pages.unknown_workspace(host), 404)
            return _html(pages.page_not_found(tenant), 404)

    async def stamp_instance(self, request: web.Request, response: web.StreamResponse) -> None:
        """Name this instance on every response, errors included."""
        response.headers.update(self._instance_headers)


def _unready(reason: str) -> web.Response:
    return web.json_response({"status": "unavailable", "reason": reason}, status=503)


def build_app(
    settings: AppSettings,
    clock: Clock | None = None,
    gate: RequestGate | None = None,
    db: Database | None = None,
) -> web.Application:
    """Build the aiohttp application for one slot; ``started_at`` is read from ``clock`` now.

    It serves the probes, the workspaces' HTML pages (``app.web_pages``) and their JSON API.

    ``gate`` decides whether tenant requests are served (default: always); ``db`` is the slot's
    open database, which /readyz probes (without one, /readyz answers 503).
    """
    clock = clock or SystemClock()
    gate = gate or _AlwaysServing()
    site = _Site(settings, clock.wall_now(), gate, db)
    api = web_api.WebApi(clock, db, site._tenant, settings)
    html = web_pages.HtmlPages(clock, db, site._tenant, settings)
    access = NetworkAccess(clock, db, site._tenant, PROBE_PATHS)
    # The network restriction runs inside the API's error wrapper: its own failures are JSON too.
    middlewares = [site.fence_tenant_requests, site.not_found_pages, api.errors, access.restrict]
    app = web.Application(middlewares=middlewares)
    app[TRUSTED_PROXIES] = parse_networks(settings.trusted_proxies)
    app[NETWORK_ACCESS] = access
    app[SETTINGS_CACHE] = access
    app.on_response_prepare.append(site.stamp_instance)
    app.on_response_prepare.append(secure_api_response)
    if db is not None:
        retention = AuditRetention(db, settings.tenants, clock, lambda: gate.status().serving)
        app.on_startup.append(retention.start)
        app.on_cleanup.append(retention.stop)
    app.router.add_get(HEALTH_PATH, site.healthz)
    app.router.add_get(READY_PATH, site.readyz)
    html.setup(app)  # the landing page at "/" and every other HTML page
    api.add_routes(app.router)
    return app
