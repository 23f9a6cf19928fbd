"""The edge listener: route a request by its Host subdomain to the owner of the tenant's slot."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Final

import aiohttp
import structlog
from aiohttp import web

from consensus.state import ClusterState, SlotRecord

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
_RETRY_AFTER_S: Final = 2
_CHUNK: Final = 64 * 1024

SLOT_HEADER: Final = "X-Moonwatch-Slot"
SERVER_HEADER: Final = "X-Moonwatch-Server"


def tenant_of(host: str, base_domain: str) -> str | None:
    """The tenant label of `acme.example.test[:port]` under `example.test`, else None."""
    name = host.strip().lower()
    if name.startswith("["):  # an IPv6 literal is never a tenant
        return None
    name = name.rsplit(":", 1)[0] if ":" in name else name
    name = name.rstrip(".")
    suffix = "." + base_domain
    if not name.endswith(suffix):
        return None
    label = name[: -len(suffix)]
    if not label or "." in label or len(label) > 63:
        return None
    return label


class Edge:
    """Proxies each request to its slot's serving address from committed state."""

    def __init__(self, base_domain: str, state: Callable[[], ClusterState], server: str) -> None:
        self._base_domain = base_domain.lower()
        self._state = state
        self._server = server
        self._session: aiohttp.ClientSession | None = None

    def application(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        tenant = tenant_of(request.host, self._base_domain)
        if tenant is None:
            return _page(404, "Unknown host", f"No workspace is served at {request.host}.")
        slot = self._state().tenant_slot(tenant)
        if slot is None:
            return _page(404, "Unknown workspace", f"There is no workspace called {tenant}.")
        if slot.state != "serving" or slot.owner is None or slot.address is None:
            return _unavailable(slot, "is moving to another server")
        return await self._forward(request, slot)

    async def _forward(self, request: web.Request, slot: SlotRecord) -> web.StreamResponse:
        session = self._client()
        headers = _forward_headers(request)
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
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        response.headers.add(name, value)
                response.headers[SLOT_HEADER] = slot.name
                response.headers[SERVER_HEADER] = upstream.headers.get(
                    SERVER_HEADER, slot.owner or ""
                )
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
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


def _forward_headers(request: web.Request) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    peer = request.remote or ""
    previous = request.headers.get("X-Forwarded-For")
    # Trusted-proxy handling arrives with the throttle: for now the direct peer is appended.
    headers["X-Forwarded-For"] = f"{previous}, {peer}" if previous else peer
    headers["X-Forwarded-Host"] = request.host
    headers["X-Forwarded-Proto"] = request.scheme
    return headers


def _unavailable(slot: SlotRecord, why: str, status: int = 503) -> web.Response:
    response = _page(
        status,
        "Temporarily unavailable",
        f"This workspace {why}. It will be back in a few seconds.",
    )
    response.headers["Retry-After"] = str(_RETRY_AFTER_S)
    response.headers[SLOT_HEADER] = slot.name
    return response


def _page(status: int, title: str, text: str) -> web.Response:
    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>"
        "<body style='font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto'>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html")
