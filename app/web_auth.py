"""Who calls the JSON API: a personal API token (``Authorization: Bearer``) or the browser's
session cookie, checked against the tenant of the request's Host; sign-in and sign-out.

Rules: a request with an ``Authorization`` header is judged by that header alone (a bad one is
never rescued by a cookie). Tokens need the ``read`` scope for GET/HEAD and ``write`` for every
other method; a session may do everything its user may. A cookie-authenticated request that
changes something must carry an ``Origin`` naming the request's own host (CSRF: the tenants of a
base domain are one "site" to SameSite, so SameSite=Lax alone does not separate them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from app.accounts import (
    User,
    accept_invitation,
    authenticate,
    create_session,
    revoke_session,
    session_user,
    token_user,
)
from app.clock import Clock
from app.db import Database

SESSION_COOKIE = "mw_session"
SESSION_LIFETIME_S = 30 * 86_400
# A session unused for this long is over, even before its lifetime ends.
SESSION_IDLE_TIMEOUT_S = 7 * 86_400
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_SCOPE = "read"
WRITE_SCOPE = "write"
CHALLENGE = {"WWW-Authenticate": "Bearer"}


class ApiError(Exception):
    """An answer for the client: ``str(error)`` is safe to show, ``status`` its HTTP status."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def unauthorized(message: str = "sign in or send an API token") -> ApiError:
    """The 401 of a request without valid credentials, with its Bearer challenge."""
    return ApiError(401, message, CHALLENGE)


@dataclass(frozen=True)
class Caller:
    """The authenticated user of one API request, the tenant it is for and how it signed in."""

    tenant_id: int
    tenant: str
    user: User
    via: Literal["token", "session"]
    scopes: frozenset[str]


def _bearer(header: str) -> str:
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise unauthorized("the Authorization header takes: Bearer <API token>")
    return credentials.strip()


def forwarded_https(request: web.Request) -> bool:
    """Whether the client reached us over HTTPS: TLS here, or the edge's X-Forwarded-Proto."""
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or proto == "https"


def same_origin(request: web.Request) -> bool:
    """Whether the request's ``Origin`` names the host the request was sent to."""
    origin = request.headers.get(hdrs.ORIGIN, "")
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    host = request.headers.get(hdrs.HOST, "")
    return bool(netloc) and netloc.lower() == host.lower()


class ApiAuth:
    """Checks credentials of one tenant's API requests; signs users in and out."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def caller(self, request: web.Request, tenant_id: int, tenant: str) -> Caller:
        """The caller of ``request`` with the scope its method needs; ApiError 401/403 else."""
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is not None:
            return await self._token_caller(request, header, tenant_id, tenant)
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is None:
            raise unauthorized()
        user = await session_user(self._db, tenant_id, cookie, SESSION_IDLE_TIMEOUT_S, self._clock)
        if user is None:
            raise unauthorized("your session has ended: sign in again")
        if request.method not in SAFE_METHODS and not same_origin(request):
            raise ApiError(403, "cross-origin request refused: send an Origin of this workspace")
        return Caller(tenant_id, tenant, user, "session", frozenset({READ_SCOPE, WRITE_SCOPE}))

    async def _token_caller(
        self, request: web.Request, header: str, tenant_id: int, tenant: str
    ) -> Caller:
        found = await token_user(self._db, tenant_id, _bearer(header), self._clock)
        if found is None:
            raise unauthorized("the API token is not valid here")
        user, scopes = found
        needed = READ_SCOPE if request.method in SAFE_METHODS else WRITE_SCOPE
        if needed not in scopes:
            raise ApiError(403, f"this API token lacks the {needed!r} scope")
        return Caller(tenant_id, tenant, user, "token", scopes)

    async def sign_in(
        self, request: web.Request, tenant_id: int, email: str, password: str
    ) -> tuple[User, str]:
        """Check e-mail and password (InvalidCredentials, one answer for every failure) and
        start a session; return the user and the session token for the cookie."""
        if hdrs.ORIGIN in request.headers and not same_origin(request):
            raise ApiError(403, "cross-origin sign-in refused")
        user = await authenticate(self._db, tenant_id, email, password)
        agent = request.headers.get(hdrs.USER_AGENT, "")
        token = await create_session(
            self._db, tenant_id, user.id, agent, request.remote or "", SESSION_LIFETIME_S,
            self._clock,
        )  # fmt: skip
        return user, token

    async def accept(
        self, request: web.Request, tenant_id: int, token: str, display_name: str, password: str
    ) -> tuple[User, str]:
        """Accept an invitation or setup link (its own errors: expired, used, unknown, a
        password against the policy) and start a session for the new user."""
        if hdrs.ORIGIN in request.headers and not same_origin(request):
            raise ApiError(403, "cross-origin request refused")
        user = await accept_invitation(
            self._db, tenant_id, token, display_name, password, clock=self._clock
        )
        agent = request.headers.get(hdrs.USER_AGENT, "")
        session = await create_session(
            self._db, tenant_id, user.id, agent, request.remote or "", SESSION_LIFETIME_S,
            self._clock,
        )  # fmt: skip
        return user, session

    async def sign_out(self, request: web.Request, tenant_id: int) -> None:
        """Revoke the session of the request's cookie; ApiError 401 when it has none live."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is None:
            raise unauthorized("you are not signed in")
        if request.headers.get(hdrs.ORIGIN) is not None and not same_origin(request):
            raise ApiError(403, "cross-origin request refused: send an Origin of this workspace")
        if not await revoke_session(self._db, tenant_id, cookie, clock=self._clock):
            raise unauthorized("you are not signed in")


def set_session_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    """Host-only, HttpOnly, SameSite=Lax; Secure when the client came over HTTPS."""
    response.set_cookie(
        SESSION_COOKIE, token, max_age=SESSION_LIFETIME_S, path="/", httponly=True,
        samesite="Lax", secure=forwarded_https(request),
    )  # fmt: skip


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    """Tell the browser to forget the session cookie."""
    response.del_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="Lax", secure=forwarded_https(request)
    )
