"""Real processes: a failed Raft voter is replaced by a spare, so the next failure still
leaves a quorum that heals."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.chaos.test_replacement_processes import Harness, harness, served_by_other
from tests.support import wait_until

pytestmark = [pytest.mark.processes, pytest.mark.timeout(150)]
__all__ = ["harness"]  # the fixture, imported for pytest


async def settled_voters(h: Harness) -> list[str] | None:
    status = await h.status()
    if status.get("voter_change") is not None or status.get("leader") is None:
        return None
    return list(status["voters"])


async def test_a_killed_voter_is_replaced_and_the_next_failure_still_heals(
    harness: Harness,
) -> None:
    h = harness
    first = await h.leader()  # the hardest voter to lose: the new leader must do the work
    assert first in ("a1", "a2", "a3")
    h.cluster.kill(first, signal.SIGKILL)

    async def replaced() -> list[str] | None:
        voters = await settled_voters(h)
        return voters if voters and first not in voters and len(voters) == 3 else None

    voters = await wait_until(replaced, 40)
    newcomer = next(v for v in voters if v.startswith("p"))
    kinds = [
        (d["kind"], d["subject"]) for d in await h.decisions() if d["kind"].startswith("voter_")
    ]
    assert kinds == [
        ("voter_replacement_started", first),
        ("voter_added", newcomer),
        ("voter_removed", first),
    ]
    status = await h.status()
    servers: dict[str, Any] = {s["name"]: s for s in status["servers"]}
    assert servers[newcomer]["voter"] and not servers[first]["voter"]
    assert sorted(status["raft"]["members"]) == sorted(voters)

    # The next voter goes: two of the three voters remain, so the cluster still decides.
    second = next(v for v in voters if v.startswith("a"))
    slot = next(s for s in status["slots"] if s["owner"] == second)
    h.cluster.kill(second, signal.SIGKILL)
    via = newcomer  # alive() still lists killed servers until they are reaped
    await wait_until(lambda: served_by_other(h, slot["tenants"][0], second, via), 40)
    verdicts = [v["subject"] for v in await h.verdicts()]
    assert verdicts == [first, second]
    assert (await h.status())["leader"] in voters
