"""The pieces every security setting stands on: validated tenant settings kept as JSON, and the
append-only audit log with filters, pages, CSV export and retention, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json

import pytest

from app import audit
from app.audit import AuditFilter
from app.db import Database
from app.migrate import migrate
from app.people import PolicyViolation
from app.tenant_settings import SecuritySettings, load_settings, save_settings
from tests.app_support import DAY_S, FakeClock, clock, db, db_url, new_people
from tests.support_pg import pg_dsn, pg_server

__all__ = ["clock", "db", "db_url", "pg_dsn", "pg_server"]  # fixtures


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"password_min_length": 2}, "password_min_length must be 3 to 128, got 2"),
        ({"password_classes": frozenset({"emoji"})}, "password_classes are among"),
        ({"password_history": 16}, "password_history must be 1 to 15, or 0 for off"),
        ({"password_max_age_days": 29}, "password_max_age_days must be 30 to 3650"),
        ({"lockout_attempts": 2}, "lockout_attempts must be 3 to 10"),
        ({"lockout_minutes": 5}, "lockout_minutes must be one of 3, 15, 30, 60"),
        ({"allowed_networks": ("10.0.0.0/8", "nonsense")}, "'nonsense' is not an IP range"),
        ({"outside_networks": "basic"}, "the Basic-authentication gate needs a user"),
        ({"session_idle_minutes": 1}, "session_idle_minutes must be 5 to 43200"),
        ({"audit_retention_days": True}, "audit_retention_days must be a whole number"),
        ({"colour": "red"}, "unknown setting 'colour'"),
    ],
)
def test_settings_out_of_range_are_refused_by_name(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(PolicyViolation, match=message):
        SecuritySettings().changed(**changes)


def test_stored_settings_survive_unknown_and_bad_values() -> None:
    good = SecuritySettings(
        password_classes=frozenset({"digit", "upper"}),
        allowed_networks=("192.0.2.0/24",),
        outside_networks="basic",
        gate_user="gate",
        gate_password_hash="$argon2id$x",
    )
    assert SecuritySettings.from_json(json.loads(json.dumps(good.to_json()))) == good
    stored = {**good.to_json(), "password_history": 99, "from_the_future": 1}
    back = SecuritySettings.from_json(stored)
    assert back.password_history == 0  # the bad value falls back to its default...
    assert back.outside_networks == "basic" and back.gate_user == "gate"  # ...nothing else
    assert SecuritySettings.from_json("not a dict") == SecuritySettings()
    assert "(hidden)" in str(good.differences(SecuritySettings()))
    assert "$argon2id$x" not in repr(good)


async def test_settings_round_trip_per_tenant(db: Database, clock: FakeClock) -> None:
    await migrate(db)
    acme = await new_people(db, clock, "acme")
    globex = await new_people(db, clock, "globex")
    assert await load_settings(db, acme.tenant_id) == SecuritySettings()
    strict = SecuritySettings(password_min_length=16, lockout_attempts=3, require_totp=True)
    await save_settings(db, acme.tenant_id, strict)
    assert await load_settings(db, acme.tenant_id) == strict
    assert await load_settings(db, globex.tenant_id) == SecuritySettings()


async def test_audit_records_filter_page_export_and_prune(db: Database, clock: FakeClock) -> None:
    await migrate(db)
    acme = await new_people(db, clock, "acme")
    other = await new_people(db, clock, "globex")
    t = acme.tenant_id
    await audit.record(
        db, t, "sign_in", "wrong_password", actor="=cmd|' /C calc'!A0", ip="1.2.3.4", clock=clock
    )
    clock.advance(DAY_S)
    for _ in range(5):
        await audit.record(db, t, "sign_in", user_id=acme.alice.id, ip="::1", clock=clock)
    await audit.record(db, t, "file_download", user_id=acme.bob.id, target="file 7", clock=clock)
    await audit.record(db, other.tenant_id, "sign_in", actor="someone else", clock=clock)

    page, more = await audit.list_entries(db, t, limit=4)
    assert [e.action for e in page] == ["file_download", "sign_in", "sign_in", "sign_in"]
    assert more is not None
    rest, done = await audit.list_entries(db, t, limit=4, before_id=more)
    assert len(rest) == 3 and done is None
    failed, _ = await audit.list_entries(db, t, AuditFilter(result="failed"))
    assert [(e.result, e.ip) for e in failed] == [("wrong_password", "1.2.3.4")]
    alice, _ = await audit.list_entries(db, t, AuditFilter(action="sign_in", user_id=acme.alice.id))
    assert len(alice) == 5

    rows = list(csv.reader(io.StringIO(await audit.export_csv(db, t))))
    assert rows[0] == list(audit.CSV_COLUMNS) and len(rows) == 8
    assert rows[-1][3] == "'=cmd|' /C calc'!A0"  # never a formula in a spreadsheet
    assert "someone else" not in str(rows)

    clock.advance(30 * DAY_S)
    assert await audit.prune(db, t, 30, clock) == 1  # only the record from before day 1
    assert len((await audit.list_entries(db, t))[0]) == 6
    assert len((await audit.list_entries(db, other.tenant_id))[0]) == 1
