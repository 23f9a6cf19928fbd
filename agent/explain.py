"""Decisions in words a person on call can read, with the timeline of their incident."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from consensus.state import ClusterState, Decision
from healer.returns import AUTO_RETURN, FLAP_QUARANTINE

_SERVER_KINDS = frozenset(
    {
        "server_suspected",
        "server_refuted",
        "server_failed",
        "suspicion_dropped",
        "server_back_quarantined",
        "server_returned",
        "server_up",
        "server_draining",
    }
)


# Decisions about a slot or a voter that belong to the incident of the server they replace.
_MOVE_KINDS = frozenset({"slot_assigned", "slot_released", "slot_serving"})
_VOTER_KINDS = frozenset(
    {"voter_replacement_started", "voter_added", "voter_removed", "voter_replacement_abandoned"}
)


def _failed(d: Decision) -> str:
    e = d.evidence
    observers = ", ".join(e.get("observers", [])) or "its observers"
    lost = ", ".join(e.get("slots_lost", [])) or "no slot"
    return (
        f"{d.subject} was declared failed: {observers} could not reach it "
        f"({len(e.get('observers', []))} of {len(e.get('eligible', []))} eligible, "
        f"{e.get('required', '?')} required) for {e.get('suspected_for_s', '?')} s; "
        f"it held {lost}, which its lease still fenced."
    )


def _assigned(d: Decision) -> str:
    e = d.evidence
    return (
        f"slot {d.subject} was handed to {e.get('owner', '?')} under epoch {e.get('epoch')} "
        f"because {e.get('reason', '?')}; the old lease had been silent for "
        f"{e.get('lease_silent_s', '?')} s (wait {e.get('lease_wait_s', '?')} s) "
        f"in {e.get('mode', 'normal')} mode."
    )


def _draining(d: Decision) -> str:
    e = d.evidence
    slots = ", ".join(e.get("slots", [])) or "(none)"
    if e.get("operator", True):
        return (
            f"an operator is draining {d.subject} ({e.get('reason')}); its slots {slots} "
            "move to spares without a verdict."
        )
    return (
        f"{d.subject} drained itself: {e.get('reason')}; its slots {slots} move to spares "
        "without a verdict, and it stays out of service until an operator returns it."
    )


def _mode(d: Decision) -> str:
    e = d.evidence
    who = "an operator" if e.get("operator") else "the leader"
    return (
        f"{who} moved the cluster from {e.get('from')} to {e.get('to')} mode: {e.get('reason')} "
        f"(rule {e.get('rule', 'operator_resume' if e.get('operator') else '?')})."
    )


def _stopped(d: Decision) -> str:
    e = d.evidence
    if e.get("operator"):
        return f"an operator stopped {d.subject} for {e.get('for_s')} s: {e.get('reason')}."
    rule = e.get("rule", "?")
    figures = {
        "rps": f"{e.get('rps')} requests/s against a limit of {e.get('limit')}",
        "concurrent": f"{e.get('concurrent')} requests in flight against a limit of "
        f"{e.get('limit')}",
        "share": f"{e.get('share')} of all traffic against a limit of {e.get('limit')}",
    }.get(str(rule), str(rule))
    return (
        f"{d.subject} was stopped at every edge for {e.get('for_s')} s (stop number "
        f"{e.get('offence')} within the repeat window): {figures}, for {e.get('over_for_s')} s "
        f"across {e.get('edges')} edges; other tenants are not affected."
    )


def _returned(d: Decision) -> str:
    reason = str(d.evidence.get("reason", "?"))
    if not reason.startswith(f"{AUTO_RETURN}:"):
        return f"an operator returned {d.subject} to the spare pool: {reason}."
    rule = reason.removeprefix(f"{AUTO_RETURN}:").strip()
    return (
        f"the leader returned {d.subject} to the spare pool by itself ({rule}): it had come "
        "back after its verdict, served nothing while quarantined, and does not flap."
    )


def _held(d: Decision) -> str:
    e = d.evidence
    if e.get("action") == "return_server" and e.get("reason") == FLAP_QUARANTINE:
        failures = e.get("failures", [])
        window = e.get("window_s")
        within = f"{window:g}" if isinstance(window, int | float) else "?"
        return (
            f"{d.subject} stays quarantined ({FLAP_QUARANTINE}): {len(failures)} verdicts "
            f"within {within} s, so the leader does not return it by itself; only an "
            f"operator does (moonwatch return {d.subject})."
        )
    return f"the leader held back {e.get('action')} for {d.subject}: {e.get('reason')}."


_SENTENCES: dict[str, Callable[[Decision], str]] = {
    "bootstrap": lambda d: f"cluster {d.subject} was created from its configuration.",
    "server_up": lambda d: f"{d.subject} joined as incarnation {d.evidence.get('incarnation')}.",
    "server_suspected": lambda d: (
        f"{d.evidence.get('observer')} could not reach {d.subject} "
        f"(incarnation {d.evidence.get('incarnation')}); every other server checks it now."
    ),
    "server_refuted": lambda d: (
        f"{d.subject} answered the suspicion itself with incarnation "
        f"{d.evidence.get('incarnation')}: it is alive."
    ),
    "suspicion_dropped": lambda d: (
        f"the suspicion of {d.subject} was dropped: {d.evidence.get('reason')}."
    ),
    "server_failed": _failed,
    "server_back_quarantined": lambda d: (
        f"{d.subject} came back after being declared failed; it stays quarantined, serving "
        "nothing, until an operator returns it or, if it does not flap, the leader does once "
        "it has stayed healthy long enough."
    ),
    "server_returned": _returned,
    "slot_assigned": _assigned,
    "server_draining": _draining,
    "slot_released": lambda d: (
        f"{d.evidence.get('owner')} gave slot {d.subject} up: {d.evidence.get('reason')}."
    ),
    "mode_changed": _mode,
    "action_held": _held,
    "slot_serving": lambda d: (
        f"{d.evidence.get('owner')} serves slot {d.subject} again (epoch "
        f"{d.evidence.get('epoch')}) at {d.evidence.get('address')}: the incident is over."
    ),
    "tenant_stopped": _stopped,
    "stop_lifted": lambda d: (
        f"{d.subject} is let in again: "
        + (
            f"an operator lifted its stop ({d.evidence.get('reason')})."
            if d.evidence.get("operator")
            else "its stop ran out."
        )
    ),
    "voter_replacement_started": lambda d: (
        f"Raft voter {d.subject} failed; {d.evidence.get('add')} is to take its place as a "
        f"voter (voters were {', '.join(d.evidence.get('voters', []))}), added before "
        f"{d.subject} is removed so the group never shrinks."
    ),
    "voter_added": lambda d: (
        f"{d.subject} is a Raft voter now, caught up with the log; voters "
        f"{', '.join(d.evidence.get('voters', []))}."
    ),
    "voter_removed": lambda d: (
        f"{d.subject} was removed from the Raft voters; voters "
        f"{', '.join(d.evidence.get('voters', []))}: the group again survives one failure."
    ),
    "voter_replacement_abandoned": lambda d: (
        f"replacing Raft voter {d.subject} by {d.evidence.get('add')} was abandoned: "
        f"{d.evidence.get('reason')}; the leader picks again."
    ),
}


def explain(decision: Decision) -> str:
    """One or two sentences saying what was decided, on what evidence, by which rule."""
    sentence = _SENTENCES.get(decision.kind)
    if sentence is None:
        return f"{decision.kind} about {decision.subject}."
    return sentence(decision)


def incident(state: ClusterState, decision: Decision) -> list[Decision]:
    """The decisions of the same incident, oldest first: for a server, its suspicions,
    verdict, return, and the assignments of the slots it lost; for a slot, the same for the
    server it was taken from."""
    server = _incident_server(decision)
    if server is None:
        return [decision]
    related = [
        d
        for d in state.decisions
        if (d.kind in _SERVER_KINDS and d.kind != "server_up" and d.subject == server)
        or (d.kind in _MOVE_KINDS | _VOTER_KINDS and _took_from(d) == server)
    ]
    # One incident: from the last suspicion at or before this decision to the next one after.
    starts = [d.at for d in related if d.kind == "server_suspected" and d.at <= decision.at]
    begin = max(starts, default=min((d.at for d in related), default=decision.at))
    after = [d.at for d in related if d.kind == "server_suspected" and d.at > decision.at]
    end = min(after, default=float("inf"))
    episode = [d for d in related if begin <= d.at < end]
    return episode or [decision]


def _incident_server(decision: Decision) -> str | None:
    if decision.kind in _SERVER_KINDS:
        return decision.subject
    return _took_from(decision)


def _took_from(decision: Decision) -> str | None:
    if decision.kind == "slot_assigned":
        previous = decision.evidence.get("previous_owner")
        return previous if isinstance(previous, str) else None
    if decision.kind == "slot_released":
        owner = decision.evidence.get("owner")
        return owner if isinstance(owner, str) else None
    if decision.kind == "slot_serving":
        previous = decision.evidence.get("previous_owner")
        return previous if isinstance(previous, str) else None
    if decision.kind in _VOTER_KINDS:
        removed = decision.evidence.get("remove")
        return removed if isinstance(removed, str) else None
    return None


def explained(state: ClusterState, decision: Decision) -> dict[str, Any]:
    """The explanation and the incident timeline, JSON-ready."""
    timeline = incident(state, decision)
    start = timeline[0].at
    return {
        "explanation": explain(decision),
        "timeline": [
            {
                "id": d.id,
                "kind": d.kind,
                "at": d.at,
                "after_s": round(d.at - start, 3),
                "what": explain(d),
            }
            for d in timeline
        ],
    }


def incident_start(state: ClusterState, slot: str, epoch: int) -> float | None:
    """When the trouble that moved `slot` to `epoch` began: the first suspicion (the first
    missed probe that was reported) of the server it was taken from, or the release or
    verdict when there was no suspicion. None when the slot was not moved to that epoch."""
    assigned = next(
        (
            d
            for d in reversed(state.decisions)
            if d.kind == "slot_assigned" and d.subject == slot and d.evidence.get("epoch") == epoch
        ),
        None,
    )
    previous = _took_from(assigned) if assigned is not None else None
    if assigned is None or previous is None:
        return None
    earlier = [
        d
        for d in state.decisions
        if d.at <= assigned.at
        and d.subject == previous
        and d.kind in ("server_suspected", "server_failed")
    ]
    released = [
        d
        for d in state.decisions
        if d.kind == "slot_released" and d.subject == slot and d.at <= assigned.at
    ]
    # The latest failure episode before the assignment: its first suspicion, or the verdict.
    verdicts = [d for d in earlier if d.kind == "server_failed"]
    if verdicts:
        last_verdict = verdicts[-1]
        suspicions = [
            d for d in earlier if d.kind == "server_suspected" and d.at >= last_verdict.at - 60.0
        ]
        return min((d.at for d in suspicions), default=last_verdict.at)
    if released:
        return released[-1].at
    return assigned.at
