"""Healing policy end to end: spares running out, the spare reserve, flapping servers."""

from __future__ import annotations

from collections import Counter

from consensus.commands import DrainServer
from healer.returns import ReturnPolicy
from tests.cluster.clustersim import ClusterSim, Committed, SimTiming

KILL_AT = 5.0
# Quick returns, so a whole flap story fits in a short run.
QUICK_RETURNS = SimTiming(returns=ReturnPolicy(auto_return_s=10.0, flap_window_s=600.0))


def _held(sim: ClusterSim) -> list[tuple[str, str, str]]:
    return [
        (c.decision.subject, c.decision.evidence["action"], c.decision.evidence["reason"])
        for c in sim.decided("action_held")
    ]


def _report(sim: ClusterSim) -> str:
    verdicts = [(c.decision.subject, round(c.t, 2)) for c in sim.decided("server_failed")]
    moved = [
        (c.decision.subject, c.decision.evidence["owner"], round(c.t, 2))
        for c in sim.decided("slot_assigned")
    ]
    modes = [(round(c.t, 2), c.decision.evidence.get("rule")) for c in sim.decided("mode_changed")]
    returned = [(c.decision.subject, round(c.t, 2)) for c in sim.decided("server_returned")]
    return (
        f"verdicts {verdicts}; assigned {moved}; modes {modes}; held {Counter(_held(sim))}; "
        f"returned {returned}"
    )


def _one_owner_per_slot_and_epoch(sim: ClusterSim) -> None:
    assert sim.violations == []
    for slot in sim.state.slots:
        history = sim.owner_history(slot.name)
        assert [e for e, _ in history] == list(range(1, len(history) + 1))
    owners = [s.owner for s in sim.state.slots if s.state in ("assigned", "serving")]
    assert len(owners) == len(set(owners)), "a server owns two slots"


def test_more_failures_than_spares_use_every_spare_hold_the_rest_and_cascade() -> None:
    """Fourteen servers, two spares (s12, s13). Three actives in three domains fail at once:
    below the verdict-rate threshold of twelve actives (4), and no domain loses most of its
    servers, so only the spares running out can bring cascade mode."""
    sim = ClusterSim(14, 12, seed=6)
    victims = ["s01", "s04", "s05"]
    sim.run_until(KILL_AT)
    for victim in victims:
        sim.kill(victim)
    sim.run_until(20.0)
    print(f"\n{_report(sim)}")
    assert sim.timing.cascade.threshold(12) == 4
    assert {c.decision.subject for c in sim.decided("server_failed")} == set(victims)
    moved = sim.decided("slot_assigned")
    assert sorted(c.decision.evidence["owner"] for c in moved) == sim.spares
    (waiting,) = {sim.slot_of[v] for v in victims} - {c.decision.subject for c in moved}
    assert sim.state.slot(waiting).state == "lost"  # type: ignore[union-attr]
    # Held, with its reason, once in normal mode and once more in the cascade it brought.
    held = sim.decided("action_held")
    assert _held(sim) == [(waiting, "assign_slot", "no spare is ready")] * 2
    assert [c.decision.evidence["mode"] for c in held] == ["normal", "cascade"]
    (entered,) = sim.decided("mode_changed")
    assert entered.decision.subject == "cascade"
    assert entered.decision.evidence["rule"] == "spares_exhausted"
    assert entered.decision.evidence["slots_waiting"] == [waiting]
    assert max(c.t for c in moved) <= entered.t
    _one_owner_per_slot_and_epoch(sim)


def _returns(sim: ClusterSim, server: str) -> list[Committed]:
    return sim.decided("server_returned", server)


def test_a_flapping_server_stays_quarantined_while_a_single_failure_returns() -> None:
    """s01 and s02 fail, come back quarantined and return to the pool by themselves; s01 fails
    again within the flap window and, back once more, stays quarantined with the reason
    recorded. Kills are more than a minute apart, so no cascade interferes."""
    sim = ClusterSim(14, 10, seed=7, timing=QUICK_RETURNS)
    auto_return_s = 10.0
    sim.run_until(KILL_AT)
    sim.kill("s01")
    sim.kill("s02")
    sim.run_until(10.0)
    sim.restart("s01")
    sim.restart("s02")
    sim.run_until(25.0)
    for name in ("s01", "s02"):
        (back,) = sim.decided("server_back_quarantined", name)
        (returned,) = _returns(sim, name)
        assert returned.t - back.t >= auto_return_s
        assert returned.t - back.t <= auto_return_s + 2 * sim.timing.tick_s
        assert returned.decision.evidence == {
            "reason": "auto return: healthy for 10 s after its verdict",
            "previous_state": "quarantined",
            "state": "up",
        }
        record = sim.state.server(name)
        assert record is not None and (record.state, record.role) == ("up", "spare")

    sim.run_until(70.0)
    sim.kill("s01")
    sim.run_until(75.0)
    sim.restart("s01")
    sim.run_until(100.0)
    print(f"\n{_report(sim)}")
    assert len(sim.decided("server_failed", "s01")) == 2
    assert len(sim.decided("server_back_quarantined", "s01")) == 2
    assert len(_returns(sim, "s01")) == 1  # only the first time
    flapper = sim.state.server("s01")
    assert flapper is not None and flapper.state == "quarantined"
    verdicts = tuple(c.t for c in sim.decided("server_failed", "s01"))
    assert flapper.failures == verdicts
    (held,) = sim.decided("action_held", "s01")
    assert (held.decision.evidence["action"], held.decision.evidence["reason"]) == (
        "return_server",
        "flap quarantine",
    )
    assert held.decision.evidence["failures"] == list(verdicts)
    assert held.decision.evidence["window_s"] == 600.0
    assert held.t - sim.decided("server_back_quarantined", "s01")[-1].t >= auto_return_s
    single = sim.state.server("s02")
    (single_verdict,) = (c.t for c in sim.decided("server_failed", "s02"))
    assert single is not None and (single.state, single.failures) == ("up", (single_verdict,))
    assert sim.decided("mode_changed") == []
    _one_owner_per_slot_and_epoch(sim)


def test_the_spare_reserve_is_kept_from_replacement_but_serves_a_drain() -> None:
    """Six servers, one spare (s05) kept in reserve. A failure leaves its slot held (the spares
    have run out: a cascade); an operator's drain of another server may still use the spare."""
    sim = ClusterSim(6, 5, seed=8, timing=SimTiming(spare_reserve=1))
    sim.run_until(KILL_AT)
    sim.kill("s01")
    sim.run_until(15.0)
    lost = sim.slot_of["s01"]
    assert sim.decided("slot_assigned") == []
    assert sim.state.slot(lost).state == "lost"  # type: ignore[union-attr]
    (entered,) = sim.decided("mode_changed")
    assert entered.decision.evidence == {
        "rule": "spares_exhausted",
        "slots_waiting": [lost],
        "spares_up": 1,
        "spare_reserve": 1,
        "from": "normal",
        "to": "cascade",
        "reason": f"no spare beyond the reserve of 1 left for {lost}",
        "operator": False,
    }
    assert _held(sim) == [(lost, "assign_slot", "spare reserve (1 kept)")]
    spare = sim.state.server("s05")
    assert spare is not None and (spare.role, spare.state) == ("spare", "up")

    drained = sim.slot_of["s02"]
    drain = DrainServer(id="drain:s02", at=sim.now, server="s02", reason="kernel upgrade")
    assert sim.leader is not None and sim.submit(sim.leader, drain)
    sim.run_until(20.0)
    print(f"\n{_report(sim)}")
    (moved,) = sim.decided("slot_assigned")
    assert (moved.decision.subject, moved.decision.evidence["owner"]) == (drained, "s05")
    assert moved.decision.evidence["reason"] == "released by s02"
    assert sim.state.slot(drained).state == "serving"  # type: ignore[union-attr]
    assert sim.state.slot(lost).state == "lost"  # type: ignore[union-attr]
    _one_owner_per_slot_and_epoch(sim)
