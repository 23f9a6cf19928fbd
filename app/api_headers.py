"""The security headers of every /api/v1 answer, errors included (set as the response starts)."""

from __future__ import annotations

from aiohttp import web

from app.web_api import API_PREFIX
from app.web_auth import forwarded_https
from app.web_pages_view import HSTS

API_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


async def secure_api_response(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp on_response_prepare hook: an API answer gets each header it does not set itself
    (a download keeps its own sandbox policy), and HSTS when the client came over HTTPS."""
    path = request.path
    if path != API_PREFIX and not path.startswith(API_PREFIX + "/"):
        return
    for name, value in API_SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if forwarded_https(request):
        response.headers.setdefault("Strict-Transport-Security", HSTS)
