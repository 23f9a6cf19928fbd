"""Automatic return of quarantined servers to the spare pool, and the flap quarantine."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from consensus.commands import Command, RecordHeld, ReturnServer
from consensus.machine import apply
from consensus.state import ClusterState, Decision, ServerRecord, ServerState
from healer.cascade import Mode
from healer.returns import ReturnPolicy, flap_verdicts, plan_returns

W = 1_700_000_000.0  # the leader's wall clock in every row
POLICY = ReturnPolicy(auto_return_s=120.0, flap_failures=2, flap_window_s=3600.0)
WAITING = "m1 quarantined: auto return after 120 s back"
FLAPPING = "m1 stays quarantined: 2 verdicts within 3600 s (flap quarantine)"


def server(
    back_s: float = 120.0,
    *failed_s: float,
    name: str = "m1",
    state: ServerState = "quarantined",
    incarnation: int = 3,
) -> ServerRecord:
    """A spare-to-be `back_s` seconds in its current state, with verdicts `failed_s` seconds
    ago (one, 300 s ago, unless given)."""
    failures = tuple(W - s for s in (failed_s or (300.0,)))
    return ServerRecord(name, "spare", "rack-a", state, incarnation, W - back_s, failures)


def cluster(
    *servers: ServerRecord, mode: Mode = "normal", decisions: tuple[Decision, ...] = ()
) -> ClusterState:
    others = (ServerRecord("m9", "active", "rack-b", "up", 1, 10.0),)
    return ClusterState(
        cluster="moon",
        servers=(*servers, *others),
        mode=mode,
        decisions=decisions,
        decision_seq=len(decisions),
    )


def summary(commands: Sequence[Command]) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for c in commands:
        if isinstance(c, ReturnServer):
            out.append((c.kind, c.server, c.id))
        elif isinstance(c, RecordHeld):
            out.append((c.kind, c.subject, c.id))
    return out


RETURN_M1 = ("return_server", "m1", "auto-return:m1:3")
HOLD_M1 = ("record_held", "m1", "flap-quarantine:m1:3")


@pytest.mark.parametrize(
    ("state", "policy", "commands", "notes"),
    [
        pytest.param(cluster(server(119.9)), POLICY, [], [WAITING], id="not-yet-due"),
        pytest.param(cluster(server(120.0)), POLICY, [RETURN_M1], [], id="due-exactly"),
        pytest.param(cluster(server(86_400.0)), POLICY, [RETURN_M1], [], id="long-overdue"),
        pytest.param(
            cluster(server(120.0, 900.0, 300.0)),
            POLICY,
            [HOLD_M1],
            [FLAPPING],
            id="flapping-at-the-threshold",
        ),
        pytest.param(
            cluster(server(120.0, 900.0, 300.0)),
            dataclasses.replace(POLICY, flap_failures=3),
            [RETURN_M1],
            [],
            id="one-verdict-below-the-threshold",
        ),
        pytest.param(
            cluster(server(120.0, 3900.0, 300.0)),
            POLICY,
            [HOLD_M1],
            [FLAPPING],
            id="window-edge-inclusive",
        ),
        pytest.param(
            cluster(server(120.0, 3900.01, 300.0)),
            POLICY,
            [RETURN_M1],
            [],
            id="window-edge-just-outside",
        ),
        pytest.param(
            cluster(server(50_000.0, 90_000.0, 88_000.0)),
            POLICY,
            [HOLD_M1],
            [FLAPPING],
            id="window-ends-at-the-latest-verdict-not-now",
        ),
        pytest.param(
            cluster(server(119.9, 900.0, 300.0)),
            POLICY,
            [],
            [FLAPPING],
            id="flapping-not-yet-due-is-noted-only",
        ),
        pytest.param(
            cluster(server(120.0, 90_000.0, 300.0)),
            POLICY,
            [RETURN_M1],
            [],
            id="an-old-verdict-does-not-make-a-flapper",
        ),
        pytest.param(
            cluster(server(86_400.0)),
            ReturnPolicy(auto_return_s=None),
            [],
            [],
            id="disabled",
        ),
        pytest.param(
            cluster(server(86_400.0, 900.0, 300.0)),
            ReturnPolicy(auto_return_s=None),
            [],
            [],
            id="disabled-records-no-flapper",
        ),
        pytest.param(
            cluster(dataclasses.replace(server(), since=0.0)),
            POLICY,
            [],
            ["m1 quarantined at an unknown time: an operator returns it"],
            id="quarantined-before-since-was-recorded",
        ),
        pytest.param(
            cluster(*(server(9999.0, name=f"x-{s}", state=s) for s in ("up", "failed", "new"))),
            POLICY,
            [],
            [],
            id="only-quarantined-servers",
        ),
        pytest.param(
            cluster(server(9999.0, state="draining")), POLICY, [], [], id="a-drain-is-no-quarantine"
        ),
        pytest.param(
            cluster(
                server(119.0, name="m2"), server(121.0, 900.0, 300.0), server(125.0, name="m3")
            ),
            POLICY,
            [HOLD_M1, ("return_server", "m3", "auto-return:m3:3")],
            ["m2 quarantined: auto return after 120 s back", FLAPPING],
            id="several-in-server-order",
        ),
    ],
)
def test_plan_returns(
    state: ClusterState,
    policy: ReturnPolicy,
    commands: list[tuple[str, str, str]],
    notes: list[str],
) -> None:
    planned, noted = plan_returns(state, W, policy)
    assert summary(planned) == commands
    assert len(planned) == len(commands)
    assert noted == notes


@pytest.mark.parametrize("mode", ["normal", "cascade", "recovering"])
def test_returns_happen_in_every_mode(mode: Mode) -> None:
    state = cluster(server(120.0, name="m2"), server(120.0, 900.0, 300.0), mode=mode)
    planned, _ = plan_returns(state, W, POLICY)
    assert summary(planned) == [("return_server", "m2", "auto-return:m2:3"), HOLD_M1]


def test_the_return_names_its_rule_and_the_state_machine_takes_it() -> None:
    state = cluster(server(130.0))
    (command,), _ = plan_returns(state, W, POLICY)
    assert command == ReturnServer(
        id="auto-return:m1:3",
        at=W,
        server="m1",
        reason="auto return: healthy for 120 s after its verdict",
    )
    returned = apply(state, command)
    m1 = returned.server("m1")
    assert m1 is not None
    assert (m1.state, m1.role, m1.since, m1.failures) == ("up", "spare", W, (W - 300.0,))
    assert returned.decisions[-1].evidence == {
        "reason": "auto return: healthy for 120 s after its verdict",
        "previous_state": "quarantined",
        "state": "up",
    }
    assert plan_returns(returned, W + 1, POLICY) == ([], [])


def test_the_flap_quarantine_is_recorded_once_per_incarnation() -> None:
    state = cluster(server(120.0, 900.0, 300.0))
    (held,), _ = plan_returns(state, W, POLICY)
    assert held == RecordHeld(
        id="flap-quarantine:m1:3",
        at=W,
        subject="m1",
        action="return_server",
        reason="flap quarantine",
        evidence={
            "failures": [W - 900.0, W - 300.0],
            "window_s": 3600.0,
            "flap_failures": 2,
            "incarnation": 3,
        },
    )
    recorded = apply(state, held)
    decision = recorded.decisions[-1]
    assert (decision.kind, decision.subject) == ("action_held", "m1")
    assert decision.evidence["mode"] == "normal"
    # Recorded: from now on only the note, on every tick and every leader, whatever the log
    # still remembers of the command ids.
    forgotten = dataclasses.replace(recorded, recent_commands=())
    assert plan_returns(forgotten, W + 600.0, POLICY) == ([], [FLAPPING])
    # A restart (a new incarnation) while quarantined is recorded anew.
    restarted = dataclasses.replace(
        forgotten, servers=(server(120.0, 900.0, 300.0, incarnation=4), *forgotten.servers[1:])
    )
    again, _ = plan_returns(restarted, W, POLICY)
    assert summary(again) == [("record_held", "m1", "flap-quarantine:m1:4")]


def test_a_held_record_of_another_kind_does_not_count_as_the_flap_record() -> None:
    other = Decision("d1", "action_held", W, "m1", {"action": "assign_slot", "incarnation": 3})
    state = cluster(server(120.0, 900.0, 300.0), decisions=(other,))
    planned, _ = plan_returns(state, W, POLICY)
    assert summary(planned) == [HOLD_M1]


@pytest.mark.parametrize(
    ("failed_s", "policy", "flaps"),
    [
        pytest.param((), POLICY, [], id="never-failed"),
        pytest.param((300.0,), POLICY, [], id="one-verdict"),
        pytest.param((900.0, 300.0), POLICY, [W - 900.0, W - 300.0], id="two-within"),
        pytest.param((300.0, 900.0), POLICY, [W - 300.0, W - 900.0], id="order-kept"),
        pytest.param(
            (9000.0, 900.0, 300.0), POLICY, [W - 900.0, W - 300.0], id="only-those-in-the-window"
        ),
        pytest.param(
            (900.0, 300.0), dataclasses.replace(POLICY, flap_window_s=599.0), [], id="window-short"
        ),
    ],
)
def test_flap_verdicts(
    failed_s: tuple[float, ...], policy: ReturnPolicy, flaps: list[float]
) -> None:
    record = dataclasses.replace(server(), failures=tuple(W - s for s in failed_s))
    assert flap_verdicts(record, policy) == flaps
