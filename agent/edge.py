"""The edge listener: route a request by its Host subdomain to the owner of the tenant's slot,
refusing a flooding tenant (committed stop, local token bucket, concurrency cap) first."""

from __future__ import annotations

import asyncio
import html
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
import structlog
from aiohttp import hdrs, web

from agent.clock import SystemClock
from agent.config import TenantLimits, ThrottleConfig
from agent.config_rules import TENANT_RE
from agent.traffic import TokenBuckets, TrafficCounter, client_address
from consensus.state import ClusterState, SlotRecord, Stop

_log = structlog.get_logger("moonwatch.edge")

# RFC 9110 §7.6.1 connection-specific fields, never forwarded in either direction.
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the edge alone: whatever the client sent under these names is dropped.
_EDGE_SET: Final = frozenset(
    {"forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host", "x-forwarded-proto"}
)
_RETRY_AFTER_S: Final = 2
_MAX_RETRY_AFTER_S: Final = 31 * 24 * 3600
_CHUNK: Final = 64 * 1024
# A Host header longer than this is no tenant of ours (a DNS name has at most 253 characters).
_MAX_HOST_CHARS: Final = 300
_SHOWN_HOST_CHARS: Final = 80
_MAX_REASON_CHARS: Final = 200
# nginx's "client closed request": counted, but not as an error of ours.
_CLIENT_CLOSED: Final = 499

SLOT_HEADER: Final = "X-Moonwatch-Slot"
SERVER_HEADER: Final = "X-Moonwatch-Server"
STOPPED_HEADER: Final = "X-Moonwatch-Stopped"


def tenant_of(host: str, base_domain: str) -> str | None:
    """The tenant label of `acme.example.test[:port]` under `example.test`, else None."""
    if len(host) > _MAX_HOST_CHARS or not host.isascii():
        return None
    name = host.strip().lower()
    if name.startswith("["):  # an IPv6 literal is never a tenant
        return None
    name = name.rsplit(":", 1)[0] if ":" in name else name
    name = name.rstrip(".")
    suffix = "." + base_domain
    if not name.endswith(suffix):
        return None
    label = name[: -len(suffix)]
    if not TENANT_RE.fullmatch(label):
        return None
    return label


@dataclass(slots=True)
class _Sent:
    """What the client got for one forwarded request, for the counter."""

    status: int = 500  # unless we learn otherwise, the request failed on our side
    nbytes: int = 0
    prepared: bool = False  # the status line has gone out


class Edge:
    """Proxies each request to its slot's serving address from committed state.

    Every request of a known tenant is counted in `counter`. A tenant under a committed stop
    is refused; with a `throttle` configuration, so is one over its local token bucket
    (`limits.rps`, `local_burst_s` of it) or with `limits.concurrent` requests in flight here.
    `wall` and `monotonic` are the agent clock's (the real clock when not given).
    `answered(slot, status)` learns the status of every answer to a known tenant.
    """

    def __init__(
        self,
        base_domain: str,
        state: Callable[[], ClusterState],
        server: str,
        *,
        throttle: ThrottleConfig | None = None,
        counter: TrafficCounter | None = None,
        wall: Callable[[], float] | None = None,
        monotonic: Callable[[], float] | None = None,
        answered: Callable[[str, int], None] | None = None,
    ) -> None:
        clock = SystemClock()
        self._base_domain = base_domain.lower()
        self._state = state
        self._server = server
        self._throttle = throttle
        self._wall = wall or clock.wall
        max_tracked = (throttle or ThrottleConfig()).max_tracked
        self.counter = counter if counter is not None else TrafficCounter(max_tracked)
        self._buckets = TokenBuckets(monotonic or clock.monotonic, max_tracked)
        self._trusted = tuple(throttle.trusted_proxies) if throttle else ()
        self._limits = _tenant_limits(throttle) if throttle else {}
        self._session: aiohttp.ClientSession | None = None
        self._answered = answered

    def application(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST, "")
        tenant = tenant_of(host, self._base_domain)
        if tenant is None:
            return _page(404, "Unknown host", f"No workspace is served at {_shown(host)}.")
        state = self._state()
        slot = state.tenant_slot(tenant)
        if slot is None:
            return _page(404, "Unknown workspace", f"There is no workspace called {tenant}.")
        refusal = self._refusal(state, tenant)
        if refusal is not None:
            self.counter.refuse(tenant, refusal.status, _body_size(refusal))
            if self._answered is not None:
                self._answered(slot.name, refusal.status)
            return refusal
        return await self._serve(request, tenant, slot)

    def _refusal(self, state: ClusterState, tenant: str) -> web.Response | None:
        """The 503 for a tenant that may not come in now, or None to let it in."""
        stop = state.stop(tenant)
        if stop is not None:
            now = self._wall()
            if stop.active(now):
                return _stopped(stop, now)
        if self._throttle is None:
            return None
        limits = self._limits.get(tenant, self._throttle.limits)
        if limits.rps is not None:
            capacity = limits.rps * self._throttle.local_burst_s
            wait_s = self._buckets.take(tenant, limits.rps, capacity)
            if wait_s is not None:
                return _refused("received too many requests in a short time", wait_s)
        if limits.concurrent is not None and self.counter.inflight(tenant) >= limits.concurrent:
            return _refused("has too many requests in progress", 1.0)
        return None

    async def _serve(
        self, request: web.Request, tenant: str, slot: SlotRecord
    ) -> web.StreamResponse:
        self.counter.start(tenant)
        sent = _Sent()
        try:
            response = await self._route(request, slot, sent)
            if not response.prepared:
                sent.status, sent.nbytes = response.status, _body_size(response)
            return response
        except (asyncio.CancelledError, ConnectionError):
            if not sent.prepared:
                sent.status = _CLIENT_CLOSED
            raise
        finally:
            self.counter.finish(tenant, sent.status, sent.nbytes)
            if self._answered is not None:
                self._answered(slot.name, sent.status)

    async def _route(
        self, request: web.Request, slot: SlotRecord, sent: _Sent
    ) -> web.StreamResponse:
        if slot.state != "serving" or slot.owner is None or slot.address is None:
            return _unavailable(slot, "is moving to another server")
        return await self._forward(request, slot, sent)

    async def _forward(
        self, request: web.Request, slot: SlotRecord, sent: _Sent
    ) -> web.StreamResponse:
        session = self._client()
        client = client_address(
            request.remote, request.headers.get(hdrs.X_FORWARDED_FOR), self._trusted
        )
        headers = _forward_headers(request, client)
        data = request.content.iter_chunked(_CHUNK) if request.body_exists else None
        url = f"http://{slot.address}{request.rel_url}"
        try:
            async with session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False
            ) as upstream:
                answered_slot = upstream.headers.get(SLOT_HEADER)
                if answered_slot is not None and answered_slot != slot.name:
                    _log.warning("edge_misroute", slot=slot.name, answered=answered_slot)
                    return _unavailable(slot, "answered from the wrong place", status=502)
                return await _relay(request, upstream, slot, sent)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            if sent.prepared:  # the status line is out: cutting the connection is all that is left
                _log.info("edge_stream_broken", slot=slot.name, error=str(exc))
                raise
            _log.info("edge_upstream_failed", slot=slot.name, address=slot.address, error=str(exc))
            # The owner is stopping, moving or dead: a short wait, not a broken gateway.
            return _unavailable(slot, "is not answering")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=2.0, sock_read=60.0),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session


async def _relay(
    request: web.Request, upstream: aiohttp.ClientResponse, slot: SlotRecord, sent: _Sent
) -> web.StreamResponse:
    """Stream the upstream answer to the client, counting what went out in `sent`."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for name, value in upstream.headers.items():
        if name.lower() not in _HOP_BY_HOP:
            response.headers.add(name, value)
    response.headers[SLOT_HEADER] = slot.name
    response.headers[SERVER_HEADER] = upstream.headers.get(SERVER_HEADER, slot.owner or "")
    await response.prepare(request)
    sent.status, sent.prepared = upstream.status, True
    async for chunk in upstream.content.iter_chunked(_CHUNK):
        await response.write(chunk)
        sent.nbytes += len(chunk)
    await response.write_eof()
    return response


def _tenant_limits(throttle: ThrottleConfig) -> dict[str, TenantLimits]:
    """Each overridden tenant's limits, a missing key taking the default's."""
    base = throttle.limits
    return {
        tenant: TenantLimits(
            rps=given.rps if given.rps is not None else base.rps,
            share=given.share if given.share is not None else base.share,
            concurrent=given.concurrent if given.concurrent is not None else base.concurrent,
        )
        for tenant, given in throttle.tenants.items()
    }


def _forward_headers(request: web.Request, client: str) -> dict[str, str]:
    headers = {
        k: v
        for k, v in request.headers.items()
        if k.lower() not in _HOP_BY_HOP and k.lower() not in _EDGE_SET
    }
    headers["X-Forwarded-For"] = client
    headers["X-Real-IP"] = client
    headers["X-Forwarded-Host"] = request.headers.get(hdrs.HOST, "")
    headers["X-Forwarded-Proto"] = request.scheme
    return headers


def _retry_after(wait_s: float) -> str:
    """Whole seconds for Retry-After: rounded up, at least 1, bounded (NaN too)."""
    bounded = wait_s if wait_s < _MAX_RETRY_AFTER_S else _MAX_RETRY_AFTER_S
    return str(max(1, math.ceil(bounded)))


def _in_words(wait_s: float) -> str:
    seconds = int(_retry_after(wait_s))
    if seconds == 1:
        return "a second"
    if seconds < 120:
        return f"{seconds} seconds"
    if seconds < 7200:
        return f"{round(seconds / 60)} minutes"
    return f"{round(seconds / 3600)} hours"


def _utc(at: float) -> str:
    try:
        return time.strftime(" (at %H:%M:%S UTC)", time.gmtime(at))
    except (OverflowError, OSError, ValueError):
        return ""


def _header_text(text: str, limit: int) -> str:
    """`text` made safe for a header value: printable ASCII only, at most `limit` long."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit]).strip()


def _shown(host: str) -> str:
    """A Host header as a page may show it (it may hold anything, lone surrogates too)."""
    shown = _header_text(host, _SHOWN_HOST_CHARS)
    return shown + "..." if len(host) > _SHOWN_HOST_CHARS else shown


def _stopped(stop: Stop, now: float) -> web.Response:
    wait_s = stop.until - now
    response = _page(
        503,
        "Workspace temporarily stopped",
        "This workspace is temporarily stopped because it received too many requests. "
        f"It will be back in about {_in_words(wait_s)}{_utc(stop.until)}.",
    )
    response.headers["Retry-After"] = _retry_after(wait_s)
    response.headers[STOPPED_HEADER] = _header_text(stop.reason, _MAX_REASON_CHARS) or "stopped"
    return response


def _refused(why: str, wait_s: float) -> web.Response:
    response = _page(
        503,
        "Too many requests",
        f"This workspace {why}. Please try again in {_in_words(wait_s)}.",
    )
    response.headers["Retry-After"] = _retry_after(wait_s)
    return response


def _unavailable(slot: SlotRecord, why: str, status: int = 503) -> web.Response:
    response = _page(
        status,
        "Temporarily unavailable",
        f"This workspace {why}. It will be back in a few seconds.",
    )
    response.headers["Retry-After"] = str(_RETRY_AFTER_S)
    response.headers[SLOT_HEADER] = slot.name
    return response


def _body_size(response: web.StreamResponse) -> int:
    body = response.body if isinstance(response, web.Response) else None
    return len(body) if isinstance(body, bytes) else 0


def _page(status: int, title: str, text: str) -> web.Response:
    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>"
        "<body style='font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto'>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html")
