"""Tenant stops in the replicated state machine: stop, pin, lift, the offence record, the codec."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from consensus import stops
from consensus.commands import (
    Bootstrap,
    Command,
    CommandDecodeError,
    LiftStop,
    ServerSpec,
    SlotSpec,
    StopTenant,
    decode_command,
    encode_command,
)
from consensus.machine import CommandRejected, apply, apply_payload
from consensus.state import (
    ClusterState,
    Offence,
    StateDecodeError,
    Stop,
    decode_state,
    encode_state,
)
from consensus.stops import MAX_STOP_EVIDENCE_KEYS

BOOT = Bootstrap(
    id="c-boot",
    at=100.0,
    cluster="moon",
    config_digest="sha256:cafe",
    servers=(
        ServerSpec(name="m1", role="active", domain="rack-a"),
        ServerSpec(name="m2", role="active", domain="rack-b"),
    ),
    slots=(
        SlotSpec(name="s1", owner="m1", tenants=("acme", "hooli")),
        SlotSpec(name="s2", owner="m2", tenants=("globex", "initech")),
    ),
    lease_s=5.0,
)
BOOTED = apply(ClusterState(), BOOT)
EVIDENCE = {"rule": "rps", "rps": 42.5, "limit": 20.0, "edges": 2}


def run(state: ClusterState, *commands: Command) -> ClusterState:
    """Apply commands that must all be accepted."""
    for command in commands:
        state = apply(state, command)
    return state


def stop(
    tenant: str = "acme",
    at: float = 200.0,
    until: float = 230.0,
    *,
    offence: int = 1,
    operator: bool = False,
    evidence: dict[str, Any] | None = None,
    cid: str | None = None,
) -> StopTenant:
    return StopTenant(
        id=cid or f"stop-{tenant}-{at}-{operator}",
        at=at,
        subdomain=tenant,
        until=until,
        reason="operator pin" if operator else "over its rps limit for 1.0 s",
        offence=offence,
        evidence=EVIDENCE if evidence is None else evidence,
        operator=operator,
    )


def pin(tenant: str = "acme", at: float = 210.0, until: float = 300.0) -> StopTenant:
    return stop(tenant, at, until, operator=True, evidence={})


def lift(tenant: str = "acme", at: float = 215.0, *, operator: bool = False) -> LiftStop:
    return LiftStop(
        id=f"lift-{tenant}-{at}-{operator}",
        at=at,
        subdomain=tenant,
        reason="by hand" if operator else "expired",
        operator=operator,
    )


STOPPED = run(BOOTED, stop())  # acme stopped 200..230, offence 1
PINNED = run(BOOTED, pin())  # acme pinned 210..300


# ---------------------------------------------------------------- stop_tenant


def test_stopping_a_known_tenant_keeps_the_stop_the_offence_and_a_decision() -> None:
    state = apply(BOOTED, stop(offence=2))
    assert state.stops == (
        Stop("acme", 200.0, 230.0, "over its rps limit for 1.0 s", 2, False, EVIDENCE),
    )
    assert state.offences == (Offence("acme", 2, 200.0),)
    decision = state.decisions[-1]
    assert (decision.kind, decision.at, decision.subject) == ("tenant_stopped", 200.0, "acme")
    assert decision.evidence == {
        **EVIDENCE,
        "until": 230.0,
        "for_s": 30.0,
        "reason": "over its rps limit for 1.0 s",
        "offence": 2,
        "operator": False,
    }


def test_a_stop_leaves_the_other_tenants_alone() -> None:
    state = run(STOPPED, stop("globex", at=205.0, until=265.0))
    assert [s.subdomain for s in state.stops] == ["acme", "globex"]
    assert state.stop("globex") == Stop(
        "globex", 205.0, 265.0, "over its rps limit for 1.0 s", 1, False, EVIDENCE
    )
    assert state.stop("hooli") is None


def test_an_operator_pin_of_a_running_tenant_is_pinned_without_an_offence() -> None:
    state = apply(BOOTED, pin())
    assert state.stops == (Stop("acme", 210.0, 300.0, "operator pin", 1, True, {}),)
    assert state.offences == ()
    assert state.decisions[-1].evidence == {
        "until": 300.0,
        "for_s": 90.0,
        "reason": "operator pin",
        "offence": 1,
        "operator": True,
    }


def test_an_operator_pin_replaces_an_automatic_stop_and_keeps_its_offence() -> None:
    stopped = apply(BOOTED, stop(offence=3))
    state = apply(stopped, pin())
    assert state.stops == (Stop("acme", 210.0, 300.0, "operator pin", 3, True, {}),)
    assert state.offences == stopped.offences == (Offence("acme", 3, 200.0),)
    assert state.decisions[-1].evidence["offence"] == 3
    assert state.decisions[-1].evidence["operator"] is True


def test_an_automatic_stop_after_expiry_replaces_the_old_one() -> None:
    state = apply(STOPPED, stop(at=240.0, until=300.0, offence=2))
    assert state.stops == (
        Stop("acme", 240.0, 300.0, "over its rps limit for 1.0 s", 2, False, EVIDENCE),
    )
    assert state.offences == (Offence("acme", 2, 240.0),)


@pytest.mark.parametrize(
    ("start", "command", "reason", "stale"),
    [
        pytest.param(BOOTED, stop("mallory"), "no tenant 'mallory'", False, id="unknown-tenant"),
        pytest.param(
            BOOTED, stop(until=200.0), "until 200.0 is not after 200.0", False, id="until-equals-at"
        ),
        pytest.param(
            BOOTED, stop(until=199.0), "until 199.0 is not after 200.0", False, id="until-before-at"
        ),
        pytest.param(BOOTED, stop(until=math.inf), "is not after", False, id="until-infinite"),
        pytest.param(BOOTED, stop(until=math.nan), "is not after", False, id="until-nan"),
        pytest.param(
            BOOTED,
            stop(evidence={f"k{i}": i for i in range(MAX_STOP_EVIDENCE_KEYS + 1)}),
            f"more than {MAX_STOP_EVIDENCE_KEYS} keys",
            False,
            id="evidence-too-big",
        ),
        pytest.param(
            STOPPED, stop(at=210.0, offence=2), "acme is already stopped", True, id="auto-on-auto"
        ),
        pytest.param(PINNED, stop(at=220.0), "acme is already stopped", True, id="auto-on-pinned"),
        pytest.param(
            STOPPED,
            lift(at=229.9),
            "only an operator lifts a stop early",
            True,
            id="auto-lift-early",
        ),
        pytest.param(
            PINNED, lift(at=299.0), "only an operator lifts a stop early", True, id="auto-lift-pin"
        ),
        pytest.param(BOOTED, lift(), "'acme' is not stopped", True, id="lift-not-stopped"),
        pytest.param(
            BOOTED,
            lift(operator=True),
            "'acme' is not stopped",
            True,
            id="operator-lift-not-stopped",
        ),
        pytest.param(STOPPED, lift("globex"), "'globex' is not stopped", True, id="lift-other"),
        pytest.param(
            ClusterState(), stop(), "the cluster is not bootstrapped yet", False, id="no-cluster"
        ),
    ],
)
def test_rejected_stop_commands(
    start: ClusterState, command: Command, reason: str, stale: bool
) -> None:
    with pytest.raises(CommandRejected) as caught:
        apply(start, command)
    assert reason in caught.value.reason
    assert caught.value.stale is stale


def test_evidence_at_the_key_limit_is_accepted() -> None:
    evidence = {f"k{i}": i for i in range(MAX_STOP_EVIDENCE_KEYS)}
    assert apply(BOOTED, stop(evidence=evidence)).stops[0].evidence == evidence


def test_a_pin_may_be_renewed_by_an_operator() -> None:
    state = apply(PINNED, stop(at=220.0, until=400.0, operator=True, evidence={}, cid="pin-again"))
    assert state.stops == (Stop("acme", 220.0, 400.0, "operator pin", 1, True, {}),)


# ---------------------------------------------------------------- lift_stop


@pytest.mark.parametrize(
    ("start", "command", "evidence"),
    [
        pytest.param(
            STOPPED,
            lift(at=215.0, operator=True),
            {"reason": "by hand", "operator": True, "until": 230.0, "pinned": False},
            id="operator-lifts-early",
        ),
        pytest.param(
            STOPPED,
            lift(at=230.0),
            {"reason": "expired", "operator": False, "until": 230.0, "pinned": False},
            id="auto-lift-at-until",
        ),
        pytest.param(
            STOPPED,
            lift(at=260.0),
            {"reason": "expired", "operator": False, "until": 230.0, "pinned": False},
            id="auto-lift-after-until",
        ),
        pytest.param(
            PINNED,
            lift(at=250.0, operator=True),
            {"reason": "by hand", "operator": True, "until": 300.0, "pinned": True},
            id="operator-lifts-a-pin",
        ),
        pytest.param(
            PINNED,
            lift(at=300.0),
            {"reason": "expired", "operator": False, "until": 300.0, "pinned": True},
            id="expired-pin-lifted",
        ),
    ],
)
def test_lifting_a_stop(start: ClusterState, command: LiftStop, evidence: dict[str, Any]) -> None:
    state = apply(start, command)
    assert state.stops == ()
    assert state.offences == start.offences  # the record outlives the stop
    decision = state.decisions[-1]
    assert (decision.kind, decision.subject, decision.at) == ("stop_lifted", "acme", command.at)
    since = start.stops[0].since
    assert decision.evidence == {**evidence, "stopped_since": since}


def test_lifting_one_stop_keeps_the_others() -> None:
    state = run(STOPPED, stop("globex", at=205.0), lift(at=216.0, operator=True))
    assert [s.subdomain for s in state.stops] == ["globex"]


# ---------------------------------------------------------------- bounds


def test_offences_are_bounded_keeping_the_latest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stops, "MAX_OFFENCES", 3)
    state = BOOTED
    for i, tenant in enumerate(("acme", "globex", "hooli", "initech")):
        state = apply(state, stop(tenant, at=200.0 + i, until=230.0 + i))
    assert state.offences == (
        Offence("globex", 1, 201.0),
        Offence("hooli", 1, 202.0),
        Offence("initech", 1, 203.0),
    )
    assert len(state.stops) == 4  # stops are bounded separately


def test_a_repeat_offence_replaces_the_tenants_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stops, "MAX_OFFENCES", 3)
    state = run(
        BOOTED,
        stop("acme", at=200.0, until=210.0),
        stop("globex", at=201.0, until=211.0),
        stop("acme", at=220.0, until=240.0, offence=2),
    )
    assert state.offences == (Offence("globex", 1, 201.0), Offence("acme", 2, 220.0))


def test_stops_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stops, "MAX_STOPS", 2)
    full = run(BOOTED, stop("acme"), stop("globex"))
    with pytest.raises(CommandRejected, match="2 stops already") as caught:
        apply(full, stop("hooli"))
    assert caught.value.stale is False
    # A tenant already in the list may still be stopped again.
    again = apply(full, stop("acme", at=240.0, until=300.0, offence=2))
    assert [s.subdomain for s in again.stops] == ["globex", "acme"]


# ---------------------------------------------------------------- Stop.active


@pytest.mark.parametrize(
    ("wall", "active"),
    [
        pytest.param(150.0, True, id="before-since"),
        pytest.param(200.0, True, id="at-since"),
        pytest.param(229.999, True, id="just-before-until"),
        pytest.param(230.0, False, id="at-until"),
        pytest.param(231.0, False, id="after-until"),
    ],
)
def test_stop_active_until_its_end(wall: float, active: bool) -> None:
    assert Stop("acme", 200.0, 230.0, "flood").active(wall) is active


# ---------------------------------------------------------------- codec


def test_state_with_stops_and_offences_round_trips_exactly() -> None:
    state = run(
        BOOTED,
        stop(offence=2, evidence={"rule": "share", "share": 0.667, "nested": {"a": [1, 2.5]}}),
        stop("globex", at=205.0, until=265.0),
        pin("hooli"),
        lift("globex", at=270.0),
    )
    assert len(state.stops) == 2 and len(state.offences) == 2
    text = encode_state(state)
    back = decode_state(text)
    assert back == state
    assert encode_state(back) == text


def test_a_stop_command_round_trips_through_the_codec() -> None:
    command = stop(offence=3, operator=True)
    assert decode_command(encode_command(command)) == command


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_a_non_finite_until_cannot_be_encoded(number: float) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        encode_command(stop(until=number))


def hand_written(field: str, number: str) -> str:
    """A valid stop payload with `field`'s value replaced by the literal `number`."""
    payload = json.loads(encode_command(stop()))
    payload[field] = "@@"
    return json.dumps(payload).replace('"@@"', number)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("field", ["until", "at"])
def test_a_non_finite_time_is_malformed(field: str, number: str) -> None:
    payload = hand_written(field, number)
    with pytest.raises(CommandDecodeError, match=field):
        decode_command(payload)
    after, result = apply_payload(BOOTED, payload)
    assert after is BOOTED and result.status == "rejected"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "1e999"])
def test_a_non_finite_evidence_value_is_malformed(number: str) -> None:
    payload = encode_command(stop()).replace('"rps":42.5', f'"rps":{number}')
    assert payload != encode_command(stop())
    with pytest.raises(CommandDecodeError):
        decode_command(payload)


def test_a_stop_with_unknown_fields_is_malformed() -> None:
    payload = json.loads(encode_command(stop()))
    payload["pinned"] = True
    with pytest.raises(CommandDecodeError, match="pinned"):
        decode_command(json.dumps(payload))


def test_a_stop_state_field_from_a_newer_agent_is_refused() -> None:
    raw = json.loads(encode_state(STOPPED))
    raw["stops"][0]["colour"] = "red"
    with pytest.raises(StateDecodeError, match="cannot decode"):
        decode_state(json.dumps(raw))


def test_a_logged_history_of_stops_replays_to_one_state() -> None:
    history: list[Command] = [
        stop(),
        pin("globex"),
        stop(at=210.0, offence=2),  # stale: acme is stopped
        lift(at=231.0),
        stop(at=240.0, until=300.0, offence=2),
        lift("globex", at=250.0, operator=True),
    ]
    state = BOOTED
    outcomes = []
    for payload in [encode_command(c) for c in history]:
        state, result = apply_payload(state, payload)
        outcomes.append((result.status, result.stale))
    assert (
        outcomes == [("committed", False)] * 2 + [("rejected", True)] + [("committed", False)] * 3
    )
    final = decode_state(encode_state(state))
    assert final == state
    assert [(s.subdomain, s.offence, s.pinned) for s in final.stops] == [("acme", 2, False)]
    assert final.offences == (Offence("acme", 2, 240.0),)
    assert [d.kind for d in final.decisions[1:]] == [
        "tenant_stopped",
        "tenant_stopped",
        "stop_lifted",
        "tenant_stopped",
        "stop_lifted",
    ]


def test_rejected_stop_commands_leave_the_state_alone() -> None:
    for command in (stop("mallory"), stop(at=210.0, cid="again"), lift("globex")):
        after, result = apply_payload(STOPPED, encode_command(command))
        assert after is STOPPED and result.status == "rejected"
