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

from app.account_audit import note, user_target
from app.accounts import (
    User,
    accept_invitation,
    authenticate,
    create_session,
    revoke_session,
    session_user,
    token_user,
)
from app.client_address import client_ip
from app.clock import Clock
from app.db import Database
from app.password_policy import EXPIRED, password_expired
from app.people import now_ms
from app.second_factor import Proof, SecondFactorNeeded, check_sign_in, enrolment_required
from app.second_factor import is_enabled as second_factor_enabled
from app.sessions import SignInRefused
from app.tenant_settings import SecuritySettings, load_settings

SESSION_COOKIE = "mw_session"
# The defaults of a tenant's session_lifetime_hours and session_idle_minutes (which apply).
SESSION_LIFETIME_S = 30 * 86_400
# A session unused for this long is over, even before its lifetime ends.
SESSION_IDLE_TIMEOUT_S = 7 * 86_400
# Where a request that started a session keeps its lifetime, for the cookie's max-age.
SESSION_MAX_AGE = web.RequestKey("session_max_age_s", int)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_SCOPE = "read"
WRITE_SCOPE = "write"
CHALLENGE = {"WWW-Authenticate": "Bearer"}
ENROL_FIRST = "this workspace requires a second factor: enrol at /settings/2fa"


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
        self._settings: dict[int, SecuritySettings] = {}

    async def settings(self, tenant_id: int) -> SecuritySettings:
        """The tenant's security settings (read once per ApiAuth)."""
        found = self._settings.get(tenant_id)
        if found is None:
            found = self._settings[tenant_id] = await load_settings(self._db, tenant_id)
        return found

    async def session_user(self, token: str, tenant_id: int) -> User | None:
        """The user of a session token under the tenant's session lifetime and idle timeout."""
        settings = await self.settings(tenant_id)
        return await session_user(
            self._db, tenant_id, token, settings.session_idle_s, self._clock,
            lifetime_s=settings.session_lifetime_s,
        )  # fmt: skip

    async def caller(
        self, request: web.Request, tenant_id: int, tenant: str, *, expired_ok: bool = False
    ) -> Caller:
        """The caller of ``request`` with the scope its method needs; ApiError 401/403 else.
        A user whose password has expired is refused (403) unless ``expired_ok``."""
        found = await self._caller(request, tenant_id, tenant)
        settings = await self.settings(tenant_id)
        if not expired_ok and password_expired(found.user, settings, now_ms(self._clock)):
            raise ApiError(403, EXPIRED)
        return found

    async def _caller(self, request: web.Request, tenant_id: int, tenant: str) -> Caller:
        header = request.headers.get(hdrs.AUTHORIZATION)
        # Basic credentials are the network gate's (app.access), never an API credential.
        if header is not None and not header.lstrip().lower().startswith("basic "):
            return await self._token_caller(request, header, tenant_id, tenant)
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is None:
            raise unauthorized()
        user = await self.session_user(cookie, tenant_id)
        if user is None:
            raise unauthorized("your session has ended: sign in again")
        if request.method not in SAFE_METHODS and not same_origin(request):
            raise ApiError(403, "cross-origin request refused: send an Origin of this workspace")
        if await enrolment_required(self._db, tenant_id, user.id):
            raise ApiError(403, ENROL_FIRST)  # API tokens still work: made on purpose
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
        self,
        request: web.Request,
        tenant_id: int,
        email: str,
        password: str,
        proof: Proof | None = None,
    ) -> tuple[User, str]:
        """Check e-mail and password (InvalidCredentials, one answer for every failure) and
        start a session; return the user and the session token for the cookie.

        A user with a second factor needs ``proof`` too: without it SecondFactorNeeded (no
        session yet), with a wrong one SecondFactorRefused (recorded as a failed sign-in)."""
        if hdrs.ORIGIN in request.headers and not same_origin(request):
            raise ApiError(403, "cross-origin sign-in refused")
        user = await self._authenticate(request, tenant_id, email, password)
        if await second_factor_enabled(self._db, tenant_id, user.id):
            if proof is None:
                raise SecondFactorNeeded(user)
            await self.second_step(request, tenant_id, user, proof)
        return user, await self.start_session(request, tenant_id, user)

    async def second_step(
        self, request: web.Request, tenant_id: int, user: User, proof: Proof
    ) -> None:
        """Check a signing-in user's second factor; SecondFactorRefused when it is wrong."""
        ip = client_ip(request)
        await check_sign_in(self._db, tenant_id, user, proof, ip=ip, clock=self._clock)

    async def _authenticate(
        self, request: web.Request, tenant_id: int, email: str, password: str
    ) -> User:
        """The user of e-mail and password; a refusal is recorded with its reason (and the
        lockout it caused) before the one generic InvalidCredentials goes out."""
        settings = await self.settings(tenant_id)
        try:
            return await authenticate(
                self._db, tenant_id, email, password, clock=self._clock, settings=settings
            )
        except SignInRefused as exc:
            db, clock = self._db, self._clock
            target, actor = user_target(exc.user_id), email.strip()[:200]
            await note(
                db, tenant_id, request, "sign_in", exc.reason, clock=clock, actor=actor,
                target=target,
            )  # fmt: skip
            if exc.locked_now:
                detail = {
                    "attempts": settings.lockout_attempts, "minutes": settings.lockout_minutes
                }  # fmt: skip
                await note(
                    db, tenant_id, request, "lockout", clock=clock, actor=actor, target=target,
                    detail=detail,
                )  # fmt: skip
            raise

    async def start_session(self, request: web.Request, tenant_id: int, user: User) -> str:
        """A new session of ``user`` (signed in by every factor they have) for the tenant's
        session lifetime, recorded as a sign-in; its token."""
        settings = await self.settings(tenant_id)
        agent = request.headers.get(hdrs.USER_AGENT, "")
        token = await create_session(
            self._db, tenant_id, user.id, agent, client_ip(request),
            settings.session_lifetime_s, self._clock,
        )  # fmt: skip
        request[SESSION_MAX_AGE] = settings.session_lifetime_s
        await note(self._db, tenant_id, request, "sign_in", clock=self._clock, user=user)
        return token

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
        settings = await self.settings(tenant_id)
        await note(
            self._db, tenant_id, request, "invitation_accepted", clock=self._clock, user=user,
            target=user_target(user.id), detail={"role": user.role},
        )  # fmt: skip
        agent, lifetime_s = request.headers.get(hdrs.USER_AGENT, ""), settings.session_lifetime_s
        session = await create_session(
            self._db, tenant_id, user.id, agent, client_ip(request), lifetime_s, self._clock
        )
        request[SESSION_MAX_AGE] = lifetime_s
        return user, session

    async def sign_out(self, request: web.Request, tenant_id: int) -> None:
        """Revoke the session of the request's cookie; ApiError 401 when it has none live."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is None:
            raise unauthorized("you are not signed in")
        if request.headers.get(hdrs.ORIGIN) is not None and not same_origin(request):
            raise ApiError(403, "cross-origin request refused: send an Origin of this workspace")
        user = await self.session_user(cookie, tenant_id)
        if not await revoke_session(self._db, tenant_id, cookie, clock=self._clock):
            raise unauthorized("you are not signed in")
        await note(self._db, tenant_id, request, "sign_out", clock=self._clock, user=user)


def set_session_cookie(
    request: web.Request,
    response: web.StreamResponse,
    token: str,
    max_age_s: int | None = None,
) -> None:
    """Host-only, HttpOnly, SameSite=Lax; Secure when the client came over HTTPS; kept by the
    browser for ``max_age_s``, by default the lifetime of the session this request started."""
    if max_age_s is None:
        max_age_s = int(request.get(SESSION_MAX_AGE, SESSION_LIFETIME_S))
    response.set_cookie(
        SESSION_COOKIE, token, max_age=max_age_s, path="/", httponly=True,
        samesite="Lax", secure=forwarded_https(request),
    )  # fmt: skip


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    """Tell the browser to forget the session cookie."""
    response.del_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="Lax", secure=forwarded_https(request)
    )
