"""Cascade suppression end to end: many failures at once hold replacements back, then recover."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from consensus.commands import SetMode
from healer.cascade import CascadePolicy
from tests.cluster.clustersim import ClusterSim, Committed, SimTiming

KILL_AT = 5.0
DEFAULT = CascadePolicy()  # what the sim runs unless a test says otherwise
# Short quiet periods and a budget window longer than any run: every assignment of the
# cascade episode counts against the one budget.
QUICK = SimTiming(cascade=CascadePolicy(quiet_s=5.0, budget_window_s=600.0))


def _killed_at_once(
    victims: list[str], n: int, n_active: int, *, seed: int, timing: SimTiming | None = None
) -> ClusterSim:
    sim = ClusterSim(n, n_active, seed=seed, timing=timing)
    sim.run_until(KILL_AT)
    for victim in victims:
        sim.kill(victim)
    return sim


def _under_mode(sim: ClusterSim) -> list[tuple[Committed, str]]:
    """Every committed decision with the mode in effect when it committed."""
    mode, out = "normal", []
    for c in sim.decisions:
        if c.decision.kind == "mode_changed":
            mode = c.decision.evidence["to"]
        out.append((c, mode))
    return out


def _assigned(sim: ClusterSim, *modes: str) -> list[Committed]:
    """Slot assignments committed while the cluster was in one of `modes`."""
    return [c for c, m in _under_mode(sim) if c.decision.kind == "slot_assigned" and m in modes]


def _changes(sim: ClusterSim) -> list[tuple[float, str, object]]:
    return [
        (round(c.t, 2), c.decision.subject, c.decision.evidence.get("rule"))
        for c in sim.decided("mode_changed")
    ]


def _report(sim: ClusterSim) -> str:
    verdicts = [(c.decision.subject, round(c.t, 2)) for c in sim.decided("server_failed")]
    moved = [
        (c.decision.subject, round(c.t, 2), mode)
        for c, mode in _under_mode(sim)
        if c.decision.kind == "slot_assigned"
    ]
    held = Counter(
        (c.decision.subject, c.decision.evidence["mode"]) for c in sim.decided("action_held")
    )
    return f"verdicts {verdicts}; modes {_changes(sim)}; assigned {moved}; held {dict(held)}"


def _served_by_up_servers(sim: ClusterSim) -> None:
    for slot in sim.state.slots:
        owner = sim.state.server(slot.owner or "")
        assert slot.state == "serving", slot
        assert owner is not None and owner.state == "up", slot


def test_three_of_five_actives_at_once_hold_back_then_recover_by_themselves() -> None:
    victims = ["s01", "s02", "s03"]  # not s00, the Raft leader
    sim = _killed_at_once(victims, 10, 5, seed=1, timing=QUICK)
    policy = sim.timing.cascade
    sim.run_until(20.0)
    (entered,) = sim.decided("mode_changed")
    assert (entered.decision.subject, entered.decision.evidence["rule"]) == (
        "cascade",
        "verdict_rate",
    )
    assert entered.decision.evidence["threshold"] == policy.threshold(5) == 2
    # Quiet for 5 s long ago, but only one of three failed servers is replaced: still cascade.
    assert sim.state.mode == "cascade"
    moved = _assigned(sim, "cascade")
    assert len(moved) == policy.budget
    assert [c.decision.evidence["mode"] for c in moved] == ["cascade"] * policy.budget
    waiting = {sim.slot_of[v] for v in victims} - {c.decision.subject for c in moved}
    assert sorted(c.decision.subject for c in sim.decided("action_held")) == sorted(waiting)

    restarted = sim.now
    for victim in victims:
        sim.restart(victim)
    sim.run_until(40.0)
    print(f"\n{_report(sim)}")
    changes = _changes(sim)
    assert [(to, rule) for _, to, rule in changes] == [
        ("cascade", "verdict_rate"),
        ("recovering", "quiet_and_recovered"),
        ("normal", "quiet"),
    ]
    last_verdict = max(c.t for c in sim.decided("server_failed"))
    recovering_at, normal_at = changes[1][0], changes[2][0]
    assert recovering_at >= restarted
    assert recovering_at - last_verdict >= policy.quiet_s
    assert normal_at - recovering_at >= policy.quiet_s - 1e-6
    # Nothing but the budget moved until normal mode; the rest moved as soon as it was back.
    assert len(_assigned(sim, "cascade", "recovering")) == policy.budget
    assert {c.decision.subject for c in _assigned(sim, "normal")} == waiting
    assert all(c.t - normal_at < 0.5 for c in _assigned(sim, "normal"))
    # Each held slot is recorded once per mode that held it.
    held = Counter(
        (c.decision.subject, c.decision.evidence["mode"]) for c in sim.decided("action_held")
    )
    assert held == {(slot, mode): 1 for slot in waiting for mode in ("cascade", "recovering")}
    for victim in victims:
        back = sim.state.server(victim)
        assert back is not None and back.state == "quarantined"
    assert sim.violations == []
    _served_by_up_servers(sim)


def test_failures_spaced_beyond_the_window_never_cascade() -> None:
    sim = ClusterSim(10, 5, seed=2)
    victims = ["s01", "s02", "s03"]
    for at, victim in zip((KILL_AT, 70.0, 135.0), victims, strict=True):
        sim.run_until(at)
        sim.kill(victim)
    sim.run_until(145.0)
    print(f"\n{_report(sim)}")
    verdicts = [c.t for c in sim.decided("server_failed")]
    assert len(verdicts) == len(victims)
    assert min(b - a for a, b in pairwise(verdicts)) > DEFAULT.window_s
    assert sim.decided("mode_changed") == []
    assert sim.decided("action_held") == []
    assert {c.decision.subject for c in _assigned(sim, "normal")} == {
        sim.slot_of[v] for v in victims
    }
    assert sim.violations == []
    _served_by_up_servers(sim)


def test_two_failures_at_once_among_ten_actives_are_replaced_without_cascade() -> None:
    victims = ["s01", "s02"]
    sim = _killed_at_once(victims, 14, 10, seed=3)
    sim.run_until(15.0)
    print(f"\n{_report(sim)}")
    assert DEFAULT.threshold(10) == 3
    assert len(sim.decided("server_failed")) == 2
    assert sim.decided("mode_changed") == []
    moved = _assigned(sim, "normal")
    assert {c.decision.subject for c in moved} == {sim.slot_of[v] for v in victims}
    assert all(c.decision.evidence["mode"] == "normal" for c in moved)
    assert sim.violations == []
    _served_by_up_servers(sim)


def test_a_whole_failure_domain_lost_is_a_cascade() -> None:
    """Twelve servers in domains d0..d4 by index; d2 is s02 and s07, both active. Two verdicts
    stay below the rate threshold of ten actives (3), so only the lost domain can trip it."""
    probe = ClusterSim(12, 10, seed=4)
    domain = {s.name: s.domain for s in probe.state.servers}
    victims = [name for name, d in domain.items() if d == domain["s02"]]
    assert victims == ["s02", "s07"] and all(v in probe.actives for v in victims)
    sim = _killed_at_once(victims, 12, 10, seed=4)
    sim.run_until(15.0)
    print(f"\n{_report(sim)}")
    (entered,) = sim.decided("mode_changed")
    assert entered.decision.subject == "cascade"
    assert {k: entered.decision.evidence[k] for k in ("rule", "domain", "lost", "servers")} == {
        "rule": "domain_lost",
        "domain": "d2",
        "lost": 2,
        "servers": 2,
    }
    moved = _assigned(sim, "cascade")
    assert len(moved) == DEFAULT.budget
    waiting = {sim.slot_of[v] for v in victims} - {c.decision.subject for c in moved}
    assert sorted(c.decision.subject for c in sim.decided("action_held")) == sorted(waiting)
    assert sim.violations == []


def test_an_operator_resume_ends_cascade_at_once_and_replacement_proceeds() -> None:
    victims = ["s01", "s02", "s03"]
    sim = _killed_at_once(victims, 10, 5, seed=5)
    sim.run_until(10.0)
    before = sim.state
    assert before.mode == "cascade"
    held = {c.decision.subject for c in sim.decided("action_held")}
    assert len(held) == len(victims) - DEFAULT.budget
    resumed = sim.now
    resume = SetMode(
        id="operator:resume", at=resumed, mode="normal", reason="operator resume", operator=True
    )
    assert sim.leader is not None and sim.submit(sim.leader, resume)
    assert sim.state.mode == "normal" and sim.state.mode_since == resumed
    # Past the window of the verdicts it resumed from: they never bring cascade mode back.
    sim.run_until(resumed + DEFAULT.window_s + 10.0)
    print(f"\n{_report(sim)}")
    *_, last = sim.decided("mode_changed")
    assert last.t == resumed
    assert last.decision.evidence == {
        "from": "cascade",
        "to": "normal",
        "reason": "operator resume",
        "operator": True,
    }
    after = [c for c in sim.decided("slot_assigned") if c.t >= resumed]
    assert {c.decision.subject for c in after} == held
    assert all(c.t - resumed < 0.5 for c in after)
    assert sim.state.mode == "normal"
    assert sim.violations == []
    _served_by_up_servers(sim)
