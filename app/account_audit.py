"""Audit records of account and security actions made over the web (pages and API)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from app import audit
from app.client_address import client_ip
from app.clock import Clock
from app.db import Database
from app.people import User


def user_target(user_id: int | None) -> str:
    """How a record names the user it acted on."""
    return "" if user_id is None else f"user {user_id}"


async def note(
    db: Database,
    tenant_id: int,
    request: web.Request,
    action: str,
    result: str = "ok",
    *,
    clock: Clock,
    user: User | None = None,
    actor: str | None = None,
    target: str = "",
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Record ``action`` of ``user`` (the signed-in one, None before sign-in) with the client's
    address; ``actor`` defaults to the user's e-mail."""
    await audit.record(
        db, tenant_id, action, result, user_id=None if user is None else user.id,
        actor=(user.email if user is not None else "") if actor is None else actor,
        target=target, ip=client_ip(request), detail=detail, clock=clock,
    )  # fmt: skip
