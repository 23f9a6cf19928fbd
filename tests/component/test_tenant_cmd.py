"""`moonwatch tenant create`: a tenant of the configuration is provisioned in its slot's data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.cli import main
from app.accounts import tenant_by_name
from app.db import open_database, sqlite_path
from tests.support import cluster_config, write_config


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "cluster.yml", cluster_config(tmp_path / "data", actives=3))


def test_a_configured_tenant_is_created_once_with_a_setup_link(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tenant", "create", "t2x1", "--admin-email", "Boss@Example.test"]
    assert main([*argv, "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert "created tenant t2x1 in slot s2" in out
    assert "http://t2x1.localhost:" in out and "/join?token=" in out
    assert "/api/v1/invitations/accept" in out

    assert main([*argv, "--config", str(config_path)]) == 1
    assert "taken" in capsys.readouterr().err


async def test_the_tenant_lands_in_its_slots_database(config_path: Path) -> None:
    argv = ["tenant", "create", "t1x2", "--admin-email", "a@example.test"]
    # The CLI runs its own event loop: call it from a thread, as from a shell.
    assert await asyncio.to_thread(main, [*argv, "--config", str(config_path)]) == 0
    db = await open_database(sqlite_path(config_path.parent / "data" / "slots" / "s1"))
    try:
        tenant = await tenant_by_name(db, "t1x2")
    finally:
        await db.close()
    assert tenant is not None and tenant.name == "t1x2"


def test_a_tenant_in_no_slot_is_refused(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tenant", "create", "nowhere", "--admin-email", "a@example.test"]
    assert main([*argv, "--config", str(config_path)]) == 2
    assert "in no slot" in capsys.readouterr().err
