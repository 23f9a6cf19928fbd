"""Decisions explained in words, and the incident a decision belongs to."""

from __future__ import annotations

import pytest

from agent.explain import explain, explained, incident, incident_start
from agent.statusview import render_explanation
from consensus.state import ClusterState, Decision

SUSPECTED = Decision(
    "d000010", "server_suspected", 100.0, "m2", {"observer": "m1", "incarnation": 1}
)
FAILED = Decision(
    "d000011",
    "server_failed",
    101.2,
    "m2",
    {
        "observers": ["m1", "m3", "m4"],
        "eligible": ["m1", "m3", "m4", "m5"],
        "required": 3,
        "suspected_for_s": 0.81,
        "slots_lost": ["s2"],
    },
)
ASSIGNED = Decision(
    "d000012",
    "slot_assigned",
    103.5,
    "s2",
    {
        "owner": "m4",
        "previous_owner": "m2",
        "epoch": 2,
        "reason": "owner m2 failed",
        "lease_silent_s": 2.4,
        "lease_wait_s": 2.29,
        "mode": "normal",
    },
)
OTHER = Decision("d000013", "server_up", 104.0, "m5", {"incarnation": 2})
MODE = Decision(
    "d000014",
    "mode_changed",
    105.0,
    "cascade",
    {"from": "normal", "to": "cascade", "reason": "3 verdicts", "rule": "verdict_rate"},
)
STATE = ClusterState(cluster="demo", decisions=(SUSPECTED, FAILED, ASSIGNED, OTHER, MODE))


@pytest.mark.parametrize(
    ("decision", "words"),
    [
        (SUSPECTED, "m1 could not reach m2"),
        (FAILED, "m2 was declared failed: m1, m3, m4 could not reach it (3 of 4 eligible"),
        (ASSIGNED, "slot s2 was handed to m4 under epoch 2 because owner m2 failed"),
        (MODE, "the leader moved the cluster from normal to cascade mode: 3 verdicts"),
        (Decision("d1", "something_new", 1.0, "x", {}), "something_new about x."),
    ],
    ids=["suspected", "failed", "assigned", "mode", "unknown-kind"],
)
def test_explain_says_what_and_why(decision: Decision, words: str) -> None:
    assert words in explain(decision)


@pytest.mark.parametrize(
    "decision",
    [SUSPECTED, FAILED, ASSIGNED],
    ids=["from-suspicion", "from-verdict", "from-assignment"],
)
def test_every_step_of_an_incident_finds_the_same_timeline(decision: Decision) -> None:
    assert [d.id for d in incident(STATE, decision)] == ["d000010", "d000011", "d000012"]


def test_unrelated_decisions_stand_alone() -> None:
    assert incident(STATE, MODE) == [MODE]


def test_explained_times_steps_from_the_first() -> None:
    doc = explained(STATE, ASSIGNED)
    assert [s["after_s"] for s in doc["timeline"]] == [0.0, 1.2, 3.5]
    text = render_explanation({"id": "d000012", "kind": "slot_assigned", "subject": "s2", **doc})
    assert "incident timeline:" in text and "* +  3.500 s  d000012" in text


def test_an_incident_starts_at_the_first_suspicion_of_the_server_the_slot_left() -> None:
    assert incident_start(STATE, "s2", 2) == 100.0
    assert incident_start(STATE, "s2", 3) is None  # never moved to epoch 3
    assert incident_start(STATE, "s9", 2) is None


def test_a_released_slot_starts_at_its_release() -> None:
    released = Decision("d2", "slot_released", 50.0, "s1", {"owner": "m1", "reason": "crashes"})
    moved = Decision("d3", "slot_assigned", 50.5, "s1", {"previous_owner": "m1", "epoch": 2})
    state = ClusterState(cluster="demo", decisions=(released, moved))
    assert incident_start(state, "s1", 2) == 50.0


def test_a_later_incident_of_the_same_server_is_its_own_timeline() -> None:
    again = Decision("d000020", "server_suspected", 500.0, "m2", {"observer": "m3"})
    failed = Decision("d000021", "server_failed", 501.0, "m2", {"slots_lost": []})
    joined = Decision("d000005", "server_up", 50.0, "m2", {"incarnation": 1})
    state = ClusterState(
        cluster="demo", decisions=(joined, SUSPECTED, FAILED, ASSIGNED, again, failed)
    )
    assert [d.id for d in incident(state, FAILED)] == ["d000010", "d000011", "d000012"]
    assert [d.id for d in incident(state, failed)] == ["d000020", "d000021"]


AUTO_RETURNED = Decision(
    "d000030",
    "server_returned",
    700.0,
    "m2",
    {
        "reason": "auto return: healthy for 120 s after its verdict",
        "previous_state": "quarantined",
        "state": "up",
    },
)
OPERATOR_RETURNED = Decision(
    "d000031",
    "server_returned",
    701.0,
    "m3",
    {"reason": "disk replaced", "previous_state": "failed", "state": "new"},
)
FLAP_HELD = Decision(
    "d000032",
    "action_held",
    702.0,
    "m4",
    {
        "failures": [100.0, 600.0],
        "window_s": 3600.0,
        "flap_failures": 2,
        "incarnation": 3,
        "action": "return_server",
        "reason": "flap quarantine",
        "mode": "normal",
    },
)
BUDGET_HELD = Decision(
    "d000033",
    "action_held",
    703.0,
    "s1",
    {"action": "assign_slot", "reason": "spare reserve (1 kept)", "mode": "cascade"},
)


@pytest.mark.parametrize(
    ("decision", "words"),
    [
        (
            AUTO_RETURNED,
            "the leader returned m2 to the spare pool by itself (healthy for 120 s after its "
            "verdict): it had come back after its verdict, served nothing while quarantined, "
            "and does not flap.",
        ),
        (OPERATOR_RETURNED, "an operator returned m3 to the spare pool: disk replaced."),
        (
            FLAP_HELD,
            "m4 stays quarantined (flap quarantine): 2 verdicts within 3600 s, so the leader "
            "does not return it by itself; only an operator does (moonwatch return m4).",
        ),
        (BUDGET_HELD, "the leader held back assign_slot for s1: spare reserve (1 kept)."),
    ],
    ids=["auto-return", "operator-return", "flap-quarantine", "reserve-held"],
)
def test_returns_and_holds_in_words(decision: Decision, words: str) -> None:
    assert explain(decision) == words


def test_an_automatic_return_belongs_to_its_servers_incident() -> None:
    failed = Decision("d000029", "server_failed", 500.0, "m2", {"slots_lost": []})
    state = ClusterState(cluster="demo", decisions=(failed, AUTO_RETURNED, OPERATOR_RETURNED))
    assert [d.id for d in incident(state, AUTO_RETURNED)] == ["d000029", "d000030"]


def test_serving_again_and_the_voter_replacement_belong_to_the_incident() -> None:
    from agent.explain import explain, incident
    from consensus.state import ClusterState, Decision

    decisions = (
        Decision("d1", "server_suspected", 10.0, "m1", {"observer": "m2", "incarnation": 1}),
        Decision("d2", "server_failed", 11.0, "m1", {"observers": ["m2", "m3"]}),
        Decision(
            "d3",
            "voter_replacement_started",
            11.1,
            "m1",
            {"add": "m4", "remove": "m1", "voters": ["m1", "m2", "m3"]},
        ),
        Decision(
            "d4", "voter_added", 11.5, "m4", {"add": "m4", "remove": "m1", "voters": ["m1", "m4"]}
        ),
        Decision(
            "d5", "voter_removed", 11.8, "m1", {"add": "m4", "remove": "m1", "voters": ["m4"]}
        ),
        Decision(
            "d6", "slot_assigned", 13.0, "s1", {"owner": "m5", "epoch": 2, "previous_owner": "m1"}
        ),
        Decision(
            "d7",
            "slot_serving",
            13.9,
            "s1",
            {"owner": "m5", "epoch": 2, "address": "127.0.0.1:7450", "previous_owner": "m1"},
        ),
    )
    state = ClusterState(cluster="c", decisions=decisions)
    assert [d.id for d in incident(state, decisions[1])] == [d.id for d in decisions]
    assert [d.id for d in incident(state, decisions[6])] == [d.id for d in decisions]
    assert "serves slot s1 again" in explain(decisions[6])
    assert "m4 is to take its place" in explain(decisions[2])
    assert "m1 was removed from the Raft voters" in explain(decisions[4])
