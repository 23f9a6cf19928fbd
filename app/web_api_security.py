"""The JSON API of account security: changing one's own password (the one call a user whose
password has expired may make), and the tenant's security settings for owners and admins."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from app import accounts
from app.account_audit import note, user_target
from app.accounts import Forbidden, InvalidCredentials
from app.clock import Clock
from app.security_changes import apply_changes, patch_values, public_json
from app.settings_cache import settings_changed
from app.tenant_settings import load_settings
from app.web_auth import SESSION_COOKIE
from app.web_input import Call, field, json_object
from app.web_output import answer

Endpoint = Callable[[Call], Awaitable[web.StreamResponse]]


def _require_manager(call: Call) -> None:
    if call.caller.user.role not in accounts.MANAGERS:
        raise Forbidden("only an owner or admin of this workspace may do that")


class SecurityApi:
    """/me/password and /admin/security."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def routes(self, prefix: str) -> list[tuple[str, str, Endpoint, bool]]:
        """(method, path, endpoint, callable with an expired password) of each route."""
        return [
            ("POST", f"{prefix}/me/password", self.change_password, True),
            ("GET", f"{prefix}/admin/security", self.get_settings, False),
            ("PATCH", f"{prefix}/admin/security", self.patch_settings, False),
        ]

    async def _note(
        self,
        call: Call,
        action: str,
        result: str = "ok",
        *,
        target: str,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        await note(
            call.db, call.tenant_id, call.request, action, result, clock=self._clock,
            user=call.caller.user, target=target, detail=detail,
        )  # fmt: skip

    async def change_password(self, call: Call) -> web.Response:
        """POST {current_password, new_password}: the caller's sessions other than this one
        end (a token caller's all do); answers {"sessions_revoked": n}."""
        body = await json_object(call.request)
        current, new = field(body, "current_password"), field(body, "new_password")
        user = call.caller.user
        keep = call.request.cookies.get(SESSION_COOKIE) if call.caller.via == "session" else None
        try:
            revoked = await accounts.change_password(
                call.db, call.tenant_id, user.id, current, new, keep_token=keep,
                clock=self._clock,
            )  # fmt: skip
        except InvalidCredentials:
            await self._note(call, "password_change", "wrong_password", target=user_target(user.id))
            raise
        detail = {"sessions_revoked": revoked}
        await self._note(call, "password_change", target=user_target(user.id), detail=detail)
        return answer({"sessions_revoked": revoked})

    async def get_settings(self, call: Call) -> web.Response:
        """The tenant's security settings (never the gate's password hash)."""
        _require_manager(call)
        return answer(public_json(await load_settings(call.db, call.tenant_id)))

    async def patch_settings(self, call: Call) -> web.Response:
        """PATCH a partial object of settings (``gate_password`` in clear: it is hashed); a
        bad value is a 400 naming it and nothing changes. Answers the settings as GET does."""
        _require_manager(call)
        values = patch_values(await json_object(call.request))
        settings, differences = await apply_changes(call.db, call.tenant_id, values)
        if differences:
            settings_changed(call.request, call.caller.tenant)
            await self._note(call, "setting_change", target="security", detail=differences)
        return answer(public_json(settings))
