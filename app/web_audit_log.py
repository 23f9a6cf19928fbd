"""Reading the audit log over the web: the filters of a query string (shared by the admin page,
its CSV download and the JSON API), the JSON form of a record, and GET /api/v1/admin/audit.

Filters: ``action`` (one of audit.ACTIONS), ``user`` (a user id or e-mail), ``result`` ("ok" or
"failed"), ``from`` and ``to`` (UTC dates, YYYY-MM-DD, both days included), and the page's
``before`` (the API's ``cursor``): the ``next`` of the previous page. Owners and admins only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from aiohttp import web

from app import audit, work
from app.accounts import Forbidden, PolicyViolation
from app.audit import AuditEntry, AuditFilter
from app.db import Database
from app.ids import MAX_ID
from app.people import normalize_email
from app.web_input import Call, page_limit
from app.web_output import answer, listing

FILTER_NAMES = ("action", "user", "result", "from", "to")
RESULTS = ("ok", "failed")
DAY_MS = 86_400_000
MAX_QUERY_CHARS = 320


@dataclass(frozen=True)
class AuditQuery:
    """What one request asks of the log: the filter, the page, and the fields as typed."""

    wanted: AuditFilter
    before_id: int | None
    values: dict[str, str]


def require_manager(role: str) -> None:
    if role not in work.MANAGERS:
        raise Forbidden("only an owner or admin of this workspace may read the audit log")


def _day_ms(text: str, name: str) -> int:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise PolicyViolation(f"{name} must be a date such as 2024-05-31") from None
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def _page_id(text: str) -> int | None:
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= MAX_ID:
        raise PolicyViolation("the page cursor must come from a previous page")
    return int(text)


async def _user_id(db: Database, tenant_id: int, text: str) -> int | None:
    if not text:
        return None
    if text.isascii() and text.isdigit():
        if int(text) > MAX_ID:
            raise PolicyViolation("user must be a user id or an e-mail address")
        return int(text)
    try:
        email = normalize_email(text)
    except PolicyViolation:
        raise PolicyViolation("user must be a user id or an e-mail address") from None
    found = await db.fetchval(
        "SELECT id FROM users WHERE tenant_id = ? AND email = ?", tenant_id, email
    )
    if found is None:
        raise PolicyViolation(f"there is no user {email} in this workspace")
    return int(found)


async def parse_query(
    db: Database, tenant_id: int, query: Mapping[str, str], cursor: str = "before"
) -> AuditQuery:
    """The filter and page of ``query``; PolicyViolation naming the first bad field."""
    values = {name: query.get(name, "").strip() for name in FILTER_NAMES}
    if any(len(value) > MAX_QUERY_CHARS or "\x00" in value for value in values.values()):
        raise PolicyViolation("a filter is too long")
    action, result = values["action"], values["result"]
    if action and action not in audit.ACTIONS:
        raise PolicyViolation(f"there is no action {action!r}")
    if result and result not in RESULTS:
        raise PolicyViolation("result is 'ok' or 'failed'")
    since = _day_ms(values["from"], "from") if values["from"] else None
    until = _day_ms(values["to"], "to") + DAY_MS if values["to"] else None
    if since is not None and until is not None and since >= until:
        raise PolicyViolation("the 'from' date is after the 'to' date")
    wanted = AuditFilter(
        action=action or None,
        user_id=await _user_id(db, tenant_id, values["user"]),
        result=result or None,
        since_ms=since,
        until_ms=until,
    )
    return AuditQuery(wanted, _page_id(query.get(cursor, "").strip()), values)


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    """One record as the API shows it (ids as strings, ``at`` in unix ms)."""
    return {
        "id": str(entry.id),
        "at": entry.at,
        "ip": entry.ip,
        "user_id": None if entry.user_id is None else str(entry.user_id),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "result": entry.result,
        "detail": entry.detail,
    }


async def audit_listing(call: Call) -> web.Response:
    """GET /api/v1/admin/audit: matching records, newest first; ``next`` is the cursor."""
    require_manager(call.caller.user.role)
    asked = await parse_query(call.db, call.tenant_id, call.request.query, "cursor")
    entries, following = await audit.list_entries(
        call.db, call.tenant_id, asked.wanted, limit=page_limit(call.request),
        before_id=asked.before_id,
    )  # fmt: skip
    cursor = None if following is None else str(following)
    return answer(listing([entry_json(entry) for entry in entries], cursor))
