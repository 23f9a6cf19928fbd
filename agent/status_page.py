"""The status page on the agent port: `GET /`, `GET /decisions/{id}` and their script and CSS."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import jinja2
from aiohttp import web

from agent.dashboard import RECENT_DECISIONS, TONES, dashboard, decision_view
from consensus.protocol import Snapshot

# The page loads nothing but its own script and CSS, and no one may frame it.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; "
        "img-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_STATIC: Final = {
    "status.js": "text/javascript",
    "status.css": "text/css",
}


@dataclass(frozen=True, slots=True)
class PageSources:
    """Where the page's data comes from: the same calls that answer the JSON API."""

    # The /v1/status document (with `backups`).
    status: Callable[[], dict[str, Any]]
    snapshot: Callable[[], Snapshot]
    # The agent's wall clock, for the time left on stops.
    wall: Callable[[], float]


def status_routes(sources: PageSources) -> list[web.RouteDef]:
    """The page's routes, to add to the agent's API application."""
    page = _StatusPage(sources)
    return [
        web.get("/", page.index),
        web.get("/decisions/{id}", page.decision),
        *(web.get(f"/static/{name}", page.static_file(name)) for name in _STATIC),
    ]


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("agent", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
    )


def _html(body: str, status: int = 200) -> web.Response:
    response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "no-store"
    return response


class _StatusPage:
    def __init__(self, sources: PageSources) -> None:
        self._sources = sources
        self._templates = _environment()
        self._files = {
            name: (resources.files("agent") / "static" / name).read_bytes() for name in _STATIC
        }

    async def index(self, _: web.Request) -> web.Response:
        doc = self._sources.status()
        decisions = self._sources.snapshot().state.decisions
        view = dashboard(doc, decisions, self._sources.wall())
        body = self._templates.get_template("status.html").render(
            v=view, tones=json.dumps(TONES, sort_keys=True), recent=RECENT_DECISIONS
        )
        return _html(body)

    async def decision(self, request: web.Request) -> web.Response:
        decision_id = request.match_info["id"]
        state = self._sources.snapshot().state
        decision = state.decision(decision_id)
        if decision is None:
            body = self._templates.get_template("missing.html").render(id=decision_id[:64])
            return _html(body, status=404)
        view = decision_view(state, decision)
        body = self._templates.get_template("decision.html").render(
            d=view, cluster=state.cluster or "the cluster"
        )
        return _html(body)

    def static_file(self, name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        content = self._files[name]
        content_type = _STATIC[name]

        async def serve(_: web.Request) -> web.Response:
            response = web.Response(body=content, content_type=content_type, charset="utf-8")
            response.headers.update(SECURITY_HEADERS)
            response.headers["Cache-Control"] = "no-cache"
            return response

        return serve
