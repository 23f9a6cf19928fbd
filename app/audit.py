"""The tenant's audit log: who did what, when, from which address, to what, with which result.

Recorded for every sign-in (success and failure with its reason), sign-out, lockout, password
change, setting change, invitation, role change, token creation and revocation, file download
and export. Records are never changed; ``prune`` deletes those older than the tenant's
retention. Nothing secret is recorded: callers pass names and ids, never passwords or tokens.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.clock import Clock
from app.db import Database
from app.ids import new_id
from app.people import now_ms

MAX_TEXT = 200  # longest actor, target or result kept
MAX_DETAIL = 2000  # longest detail JSON kept
PAGE_MAX = 200
# A CSV cell starting with one of these is a formula to a spreadsheet (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = ("time_ms", "ip", "user_id", "actor", "action", "target", "result", "detail")

# What is recorded; tests and the admin view's filter list use these names.
ACTIONS = (
    "sign_in",
    "sign_out",
    "lockout",
    "unlock",
    "password_change",
    "password_reset",
    "second_factor",
    "setting_change",
    "invitation",
    "invitation_withdrawn",
    "invitation_accepted",
    "role_change",
    "user_deactivated",
    "user_reactivated",
    "session_revoked",
    "token_created",
    "token_revoked",
    "file_download",
    "audit_export",
    "access_refused",
)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: int
    ip: str
    user_id: int | None
    actor: str
    action: str
    target: str
    result: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class AuditFilter:
    """Which records to list: each field narrows, None means any."""

    action: str | None = None
    user_id: int | None = None
    result: str | None = None  # "ok", or "failed" for every other result
    since_ms: int | None = None
    until_ms: int | None = None


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def record(
    db: Database,
    tenant_id: int,
    action: str,
    result: str = "ok",
    *,
    user_id: int | None = None,
    actor: str = "",
    target: str = "",
    ip: str = "",
    detail: Mapping[str, Any] | None = None,
    clock: Clock | None = None,
) -> None:
    """Append one record (in the caller's transaction when ``db`` is one)."""
    encoded = json.dumps(dict(detail or {}), default=str, sort_keys=True)
    if len(encoded) > MAX_DETAIL:
        encoded = json.dumps({"truncated": encoded[: MAX_DETAIL - 50]})
    await db.execute(
        "INSERT INTO audit_log (id, tenant_id, at, ip, user_id, actor, action, target, result,"
        " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        *(new_id(), tenant_id, now_ms(clock), _clip(ip, 64), user_id, _clip(actor)),
        *(_clip(action, 64), _clip(target), _clip(result, 64), encoded),
    )


def _where(tenant_id: int, wanted: AuditFilter, before_id: int | None) -> tuple[str, list[Any]]:
    clauses: list[str] = ["tenant_id = ?"]
    args: list[Any] = [tenant_id]
    if wanted.action is not None:
        clauses.append("action = ?")
        args.append(wanted.action)
    if wanted.user_id is not None:
        clauses.append("user_id = ?")
        args.append(wanted.user_id)
    if wanted.result == "ok":
        clauses.append("result = 'ok'")
    elif wanted.result is not None:
        clauses.append("result <> 'ok'")
    if wanted.since_ms is not None:
        clauses.append("at >= ?")
        args.append(wanted.since_ms)
    if wanted.until_ms is not None:
        clauses.append("at < ?")
        args.append(wanted.until_ms)
    if before_id is not None:
        clauses.append("id < ?")
        args.append(before_id)
    return " AND ".join(clauses), args


def _entry(row: Mapping[str, Any]) -> AuditEntry:
    try:
        detail = json.loads(row["detail"])
    except ValueError:
        detail = {}
    return AuditEntry(
        id=int(row["id"]),
        at=int(row["at"]),
        ip=str(row["ip"]),
        user_id=None if row["user_id"] is None else int(row["user_id"]),
        actor=str(row["actor"]),
        action=str(row["action"]),
        target=str(row["target"]),
        result=str(row["result"]),
        detail=detail if isinstance(detail, dict) else {},
    )


async def list_entries(
    db: Database,
    tenant_id: int,
    wanted: AuditFilter = AuditFilter(),
    *,
    limit: int = 50,
    before_id: int | None = None,
) -> tuple[list[AuditEntry], int | None]:
    """One page of matching records, newest first, and the ``before_id`` of the next page."""
    limit = max(1, min(limit, PAGE_MAX))
    where, args = _where(tenant_id, wanted, before_id)
    rows = await db.fetch(
        f"SELECT * FROM audit_log WHERE {where} ORDER BY id DESC LIMIT ?", *args, limit + 1
    )
    entries = [_entry(row) for row in rows[:limit]]
    return entries, (entries[-1].id if len(rows) > limit else None)


async def export_csv(db: Database, tenant_id: int, wanted: AuditFilter = AuditFilter()) -> str:
    """Every matching record, newest first, as CSV text (a header row, then one per record).
    Cells that a spreadsheet would run as a formula are prefixed with a quote."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    before: int | None = None
    while True:
        entries, before = await list_entries(
            db, tenant_id, wanted, limit=PAGE_MAX, before_id=before
        )
        writer.writerows(_csv_row(entry) for entry in entries)
        if before is None:
            return out.getvalue()


def _csv_row(entry: AuditEntry) -> Iterable[str]:
    cells = [
        str(entry.at), entry.ip, "" if entry.user_id is None else str(entry.user_id),
        entry.actor, entry.action, entry.target, entry.result,
        json.dumps(entry.detail, sort_keys=True),
    ]  # fmt: skip
    return [
        ("'" + cell) if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell for cell in cells
    ]


async def prune(
    db: Database, tenant_id: int, retention_days: int, clock: Clock | None = None
) -> int:
    """Delete the tenant's records older than ``retention_days``; how many were deleted."""
    cutoff = now_ms(clock) - retention_days * 86_400_000
    return await db.execute(
        "DELETE FROM audit_log WHERE tenant_id = ? AND at < ?", tenant_id, cutoff
    )
