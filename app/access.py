"""Per-tenant network restriction of every tenant request (pages, API, files): a client outside
the tenant's allowed networks is refused, or must first pass an HTTP Basic gate.

The gate comes before the normal sign-in, which still applies after it. A passed gate is
remembered per (tenant, credentials) for GATE_PASS_S, so each request does not cost an argon2
hash; wrong gate credentials are limited per client address. Each refusal is audited as
``access_refused``, at most once per tenant and address per REFUSAL_RECORD_S (and at most
TENANT_RECORDS per tenant in that time), so a flood cannot fill the log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from app import audit, pages
from app.access_limits import Recent, WindowCount
from app.accounts import tenant_by_name
from app.client_address import IPNetwork, client_ip, parse_networks, within
from app.clock import Clock
from app.db import Database, DatabaseError
from app.passwords import PASSWORD_MAX_LENGTH, verify_password
from app.tenant_settings import SecuritySettings, load_settings
from app.web_api import API_PREFIX
from app.web_output import error_response

_LOG = logging.getLogger(__name__)
SETTINGS_TTL_S = 2.0  # a changed setting applies within this long on every instance
GATE_PASS_S = 60.0
GATE_FAILURES = 10  # wrong gate credentials per address in GATE_FAILURE_WINDOW_S
GATE_FAILURE_WINDOW_S = 300.0
REFUSAL_RECORD_S = 60.0
TENANT_RECORDS = 60
MAX_TRACKED = 10_000
MAX_HEADER_CHARS = 4096
REFUSED = "This workspace does not accept requests from your network."
GATE_REQUIRED = "This workspace asks for its network gate's user name and password first."
TOO_MANY = "Too many wrong gate passwords from your address. Try again later."
UNAVAILABLE = "The workspace's storage is unavailable. Please try again in a moment."
_HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

TenantOf = Callable[[web.Request], str | None]


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic`` header; None when it is none or bad."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or len(value) > MAX_HEADER_CHARS:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def is_api(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


@dataclass(frozen=True)
class _Policy:
    """What the gate needs of one tenant, read at most every SETTINGS_TTL_S."""

    tenant_id: int
    settings: SecuritySettings
    networks: tuple[IPNetwork, ...]


def _answer(
    request: web.Request, status: int, heading: str, message: str, headers: dict[str, str]
) -> web.Response:
    if is_api(request.path):
        return error_response(status, message, headers)
    text = pages.render(title=heading, heading=heading, detail=message)
    return web.Response(
        text=text, status=status, content_type="text/html", headers={**_HTML_HEADERS, **headers}
    )


def _challenge(request: web.Request, tenant: str) -> web.Response:
    realm = {"WWW-Authenticate": f'Basic realm="{tenant}", charset="UTF-8"'}
    return _answer(request, 401, "Network gate", GATE_REQUIRED, realm)


class NetworkAccess:
    """The restriction of one app: a middleware, and ``forget`` for a tenant's changed settings."""

    def __init__(
        self, clock: Clock, db: Database | None, tenant_of: TenantOf, open_paths: Collection[str]
    ) -> None:
        self._clock = clock
        self._db = db
        self._tenant_of = tenant_of
        self._open_paths = frozenset(open_paths)
        self._policies: dict[str, tuple[float, _Policy | None]] = {}
        self._key = secrets.token_bytes(32)  # pass digests mean nothing outside this process
        self._passes: Recent[bytes] = Recent(MAX_TRACKED)
        self._failures: WindowCount[str] = WindowCount(GATE_FAILURE_WINDOW_S, MAX_TRACKED)
        self._recorded: Recent[tuple[int, str]] = Recent(MAX_TRACKED)
        self._tenant_records: WindowCount[int] = WindowCount(REFUSAL_RECORD_S, MAX_TRACKED)

    def forget(self, tenant: str) -> None:
        """Read ``tenant``'s settings again on its next request (after they changed)."""
        self._policies.pop(tenant, None)

    @web.middleware
    async def restrict(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Pass inside clients (and the probes); refuse or gate the others."""
        name = self._tenant_of(request)
        if name is None or self._db is None or request.path in self._open_paths:
            return await handler(request)
        try:
            policy = await self._policy(self._db, name)
        except DatabaseError:
            return _answer(
                request, 503, "Temporarily unavailable", UNAVAILABLE, {"Retry-After": "1"}
            )
        if policy is None or not policy.networks:
            return await handler(request)
        ip = client_ip(request)
        if within(ip, policy.networks):
            return await handler(request)
        if policy.settings.outside_networks == "basic":
            refusal = await self._gate(request, self._db, name, policy, ip)
            return await handler(request) if refusal is None else refusal
        await self._record(self._db, request, policy.tenant_id, ip, "refused")
        return _answer(request, 403, "Not allowed", REFUSED, {})

    async def _policy(self, db: Database, name: str) -> _Policy | None:
        now = self._clock.monotonic()
        cached = self._policies.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            tenant = await tenant_by_name(db, name)
            settings = None if tenant is None else await load_settings(db, tenant.id)
        except DatabaseError:
            if cached is None:
                raise
            _LOG.warning("cannot read the settings of %s: keeping the last ones", name)
            return cached[1]
        policy = None
        if tenant is not None and settings is not None:
            networks = parse_networks(settings.allowed_networks)
            policy = _Policy(tenant.id, settings, networks)
        self._policies[name] = (now + SETTINGS_TTL_S, policy)
        return policy

    async def _gate(
        self, request: web.Request, db: Database, tenant: str, policy: _Policy, ip: str
    ) -> web.Response | None:
        """None when the request carries the gate's credentials, else the answer to send."""
        given = basic_credentials(request.headers.get(hdrs.AUTHORIZATION, ""))
        if given is None:
            return _challenge(request, tenant)
        now = self._clock.monotonic()
        settings = policy.settings
        digest = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (tenant, settings.gate_user, settings.gate_password_hash, *given):
            digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
        key = digest.digest()
        if self._passes.fresh(key, now):
            return None
        if self._failures.count(ip, now) >= GATE_FAILURES:
            wait = max(1, round(self._failures.retry_after_s(ip, now)))
            return _answer(request, 429, "Too many attempts", TOO_MANY, {"Retry-After": str(wait)})
        if await _gate_ok(settings, *given):
            self._passes.remember(key, now + GATE_PASS_S, now)
            return None
        self._failures.add(ip, now)
        await self._record(db, request, policy.tenant_id, ip, "wrong_gate_credentials")
        return _challenge(request, tenant)

    async def _record(
        self, db: Database, request: web.Request, tenant_id: int, ip: str, result: str
    ) -> None:
        """Audit one refusal, unless this address was recorded for the tenant just now."""
        now = self._clock.monotonic()
        if self._recorded.fresh((tenant_id, ip), now):
            return
        self._recorded.remember((tenant_id, ip), now + REFUSAL_RECORD_S, now)
        if self._tenant_records.add(tenant_id, now) > TENANT_RECORDS:
            return
        detail = {"method": request.method, "path": request.path[:200]}
        try:
            await audit.record(
                db, tenant_id, "access_refused", result, ip=ip, target=request.path,
                detail=detail, clock=self._clock,
            )  # fmt: skip
        except DatabaseError:
            _LOG.warning("cannot record a refused request of tenant %s", tenant_id)


# The app's NetworkAccess: a page that saves a tenant's settings calls its ``forget``.
NETWORK_ACCESS = web.AppKey("network_access", NetworkAccess)


async def _gate_ok(settings: SecuritySettings, user: str, password: str) -> bool:
    """Check the gate's user and password (the password's hash always, so timing tells
    nothing about the user name)."""
    if len(password) > PASSWORD_MAX_LENGTH:
        return False
    user_ok = hmac.compare_digest(
        user.encode("utf-8", "surrogatepass"), settings.gate_user.encode("utf-8")
    )
    verified = await verify_password(settings.gate_password_hash, password)
    return user_ok and verified.ok and bool(settings.gate_user)
