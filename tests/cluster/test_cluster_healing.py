"""Fifty agents end to end on fake time: detectors, the replicated state and the healer's plans."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from tests.cluster.clustersim import ClusterSim, Committed

N, ACTIVE = 50, 40
KILLS_AT = (10.0, 30.0, 50.0)
VERDICT_BOUND_S = 5.0


def _kinds(sim: ClusterSim, since: float = 0.0) -> Counter[str]:
    return Counter(c.decision.kind for c in sim.decisions if c.t >= since)


def _closed(sim: ClusterSim, target: str, since: float) -> list[Committed]:
    return [
        c
        for c in sim.decided(subject=target)
        if c.t >= since and c.decision.kind in ("server_refuted", "suspicion_dropped")
    ]


def _slots_are_served_by_up_servers(sim: ClusterSim) -> None:
    for slot in sim.state.slots:
        owner = sim.state.server(slot.owner or "")
        assert slot.state == "serving", slot
        assert owner is not None and owner.state == "up", slot


def test_random_single_failures_are_judged_once_and_their_slots_move_to_spares() -> None:
    seed = 11
    sim = ClusterSim(N, ACTIVE, seed=seed, loss=0.01)
    victims = random.Random(seed).sample(sim.actives, len(KILLS_AT))
    epochs: dict[str, int] = {}
    for at, victim in zip(KILLS_AT, victims, strict=True):
        sim.run_until(at)
        (owned,) = sim.state.slots_owned_by(victim)
        epochs[victim] = owned.epoch
        sim.kill(victim)
    sim.run_until(60.0)

    wait_s = sim.timing.leases.wait_s
    print(f"\nlease wait {wait_s:.2f} s; leaders {sim.leaders}")
    for at, victim in zip(KILLS_AT, victims, strict=True):
        (verdict,) = sim.decided("server_failed", victim)
        slot = sim.slot_of[victim]
        epoch = epochs[victim] + 1
        (moved,) = [
            c for c in sim.decided("slot_assigned", slot) if c.decision.evidence["epoch"] == epoch
        ]
        new_owner = sim.owners[(slot, epoch)]
        verdict_s, moved_s = verdict.t - at, moved.t - verdict.t
        why = moved.decision.evidence["reason"]
        print(
            f"{victim} killed at {at:.0f} s: server_failed after {verdict_s:.2f} s, "
            f"{slot}@{epoch} -> {new_owner} {moved_s:.2f} s later ({why})"
        )
        assert 0 < verdict_s <= VERDICT_BOUND_S
        assert moved_s <= wait_s + 1.0
        assert new_owner in sim.spares
        assert verdict.decision.evidence["slots_lost"] == [slot]
    failed = {c.decision.subject for c in sim.decided("server_failed")}
    assert failed == set(victims)
    print(f"old leases had ended {[round(s, 2) for s in sim.fence_slack_s]} s before reassignment")
    assert sim.violations == []
    for name in sim.slot_of.values():
        history = sim.owner_history(name)
        assert [e for e, _ in history] == list(range(1, len(history) + 1))
    _slots_are_served_by_up_servers(sim)
    print(f"decisions {dict(_kinds(sim))}; rejected {dict(sim.rejected)}")


def test_a_short_isolation_is_suspected_then_refuted_never_failed() -> None:
    sim = ClusterSim(N, ACTIVE, seed=4)
    sim.run_until(10.0)
    victim = random.Random(4).choice(sim.actives[1:])  # not the Raft leader
    (slot,) = sim.state.slots_owned_by(victim)
    sim.isolate(victim)
    sim.run_until(10.3)
    sim.heal()
    sim.run_until(15.0)

    suspected = sim.decided("server_suspected", victim)
    closed = _closed(sim, victim, 10.0)
    me = sim.state.server(victim)
    assert me is not None
    print(
        f"\n{victim} isolated 0.3 s: suspected at {[round(c.t, 2) for c in suspected]}, "
        f"closed {[(round(c.t, 2), c.decision.kind) for c in closed]}; "
        f"incarnation {me.incarnation}"
    )
    assert suspected and closed
    assert closed[0].t >= suspected[0].t
    assert len(closed) == len(suspected)
    assert sim.decided("server_failed") == []
    assert me.state == "up" and me.incarnation >= 2
    assert sim.swim.nodes[victim].detector.incarnation == me.incarnation
    assert sim.owner_history(slot.name) == [(1, victim)]  # a false suspicion moves nothing
    assert sim.violations == []


def test_an_agent_cut_off_from_the_probe_network_gets_nobody_failed() -> None:
    sim = ClusterSim(N, ACTIVE, seed=3)
    sim.run_until(5.0)
    cut = random.Random(3).choice(sim.actives)
    (slot,) = sim.state.slots_owned_by(cut)
    sim.isolate(cut)
    sim.run_until(35.0)
    detector = sim.swim.nodes[cut].detector
    assert detector.awareness.suppressed
    sim.heal()
    sim.run_until(40.0)

    by_cut = [c for c in sim.decided("server_suspected") if c.decision.evidence["observer"] == cut]
    of_cut = sim.decided("server_suspected", cut)
    me = sim.state.server(cut)
    assert me is not None
    stats = detector.stats
    print(
        f"\n{cut} cut off 30 s: it opened {len(by_cut)} suspicions of others (reported "
        f"{stats['unreachable']}, suppressed {stats['suppressed_reports']}); suspected "
        f"{len(of_cut)}x, refuted {len(sim.decided('server_refuted', cut))}x, incarnation "
        f"{me.incarnation}; rejected {dict(sim.rejected)}"
    )
    assert [c for c in sim.decided("server_failed") if c.decision.subject != cut] == []
    # It refuted once through the log; later reports carry its old incarnation and are stale.
    assert sim.decided("server_failed", cut) == []
    assert of_cut and len(_closed(sim, cut, 5.0)) == len(of_cut)
    assert sim.owner_history(slot.name) == [(1, cut)]  # it kept renewing through Raft
    assert sim.violations == []
    _slots_are_served_by_up_servers(sim)


@pytest.mark.parametrize("loss", [0.05, 0.10])
def test_lossy_links_open_suspicions_that_close_without_a_verdict(loss: float) -> None:
    sim = ClusterSim(N, ACTIVE, seed=5, loss=loss)
    sim.run_until(60.0)
    kinds = _kinds(sim)
    opened = kinds["server_suspected"]
    refuted, dropped = kinds["server_refuted"], kinds["suspicion_dropped"]
    print(
        f"\n{loss:.0%} loss, 60 s: {opened} suspicions opened, {refuted} refuted by their "
        f"target, {dropped} dropped by the leader, {len(sim.state.suspicions)} still open; "
        f"rejected {dict(sim.rejected)}"
    )
    assert kinds["server_failed"] == 0
    assert opened == refuted + dropped + len(sim.state.suspicions)
    assert all(slot.epoch == 1 for slot in sim.state.slots)
    assert sim.violations == []
    _slots_are_served_by_up_servers(sim)


def test_a_server_cut_off_from_raft_loses_its_slot_by_its_lease_without_a_verdict() -> None:
    sim = ClusterSim(N, ACTIVE, seed=8)
    sim.run_until(5.0)
    cut = random.Random(8).choice(sim.actives[1:])  # not the Raft leader
    slot = sim.slot_of[cut]
    sim.cut_raft(cut)
    sim.run_until(10.0)
    (moved,) = sim.decided("slot_assigned", slot)
    print(
        f"\n{cut} cut off from Raft at 5 s: {slot} -> {sim.owners[(slot, 2)]} after "
        f"{moved.t - 5.0:.2f} s ({moved.decision.evidence['reason']}); old lease ended "
        f"{sim.fence_slack_s[-1]:.2f} s before; dropped {dict(sim.dropped)}"
    )
    assert moved.decision.evidence["reason"] == f"{cut} stopped renewing its lease"
    assert moved.t - 5.0 <= sim.timing.leases.wait_s + sim.timing.lease_renew_s + 0.2
    assert sim.owners[(slot, 2)] in sim.spares
    assert sim.decided("server_failed") == []  # it still answers probes
    sim.heal_raft(cut)
    sim.run_until(11.0)
    assert sim.agents[cut].instances == {}  # it sees the new owner and stops its instance
    assert sim.violations == []
    _slots_are_served_by_up_servers(sim)


def _run(seed: int) -> tuple[ClusterSim, list[tuple[float, str, str, str]]]:
    sim = ClusterSim(N, ACTIVE, seed=seed, loss=0.05)
    sim.run_until(5.0)
    sim.kill(sim.names[0])  # the Raft leader
    sim.run_until(12.0)
    return sim, [
        (c.t, c.decision.kind, c.decision.subject, repr(c.decision.evidence)) for c in sim.decisions
    ]


def test_the_same_seed_gives_the_same_decisions() -> None:
    sim, first = _run(21)
    _, second = _run(21)
    _, other = _run(22)
    leader = sim.names[0]
    (verdict,) = sim.decided("server_failed", leader)
    (moved,) = sim.decided("slot_assigned", sim.slot_of[leader])
    print(
        f"\n{len(first)} decisions; leaders {sim.leaders}; the old leader failed after "
        f"{verdict.t - 5.0:.2f} s, its slot moved after {moved.t - 5.0:.2f} s"
    )
    assert first == second
    assert first != other
    assert [c.decision.subject for c in sim.decided("server_failed")] == [leader]
    assert sim.owner_history(sim.slot_of[leader])[-1][1] in sim.spares
    assert sim.violations == []


def _crash_after_refuting(sim: ClusterSim, victim: str) -> None:
    sim.run_until(10.0)
    sim.isolate(victim)
    sim.run_until(10.3)
    sim.heal()
    sim.run_until(11.3)
    if not sim.decided("server_refuted", victim):
        raise RuntimeError("the scenario needs a refutation first")
    sim.kill(victim)


def _crash_right_after_start(sim: ClusterSim, victim: str) -> None:
    sim.run_until(0.5)
    sim.kill(victim)


@pytest.mark.parametrize(
    ("seed", "victim", "scenario"),
    [(4, "s12", _crash_after_refuting), (1, "s07", _crash_right_after_start)],
    ids=["refuted-then-crashed", "crashed-right-after-start"],
)
def test_a_crash_before_observers_heard_the_current_incarnation_is_still_judged(
    seed: int, victim: str, scenario: Callable[[ClusterSim, str], None]
) -> None:
    sim = ClusterSim(N, ACTIVE, seed=seed)
    scenario(sim, victim)
    killed = sim.now
    sim.run_until(killed + 3 * VERDICT_BOUND_S)
    current = 1 + len(sim.decided("server_refuted", victim))
    heard = Counter(
        sim.swim.nodes[n].detector.incarnation_of(victim) for n in sim.names if n != victim
    )
    moved = sim.decided("slot_assigned", sim.slot_of[victim])
    print(
        f"\n{victim} at incarnation {current} crashed at {killed:.1f} s; observers heard "
        f"incarnations {dict(heard)}; {len(sim.decided('server_suspected', victim))} suspicions, "
        f"{len(sim.decided('suspicion_dropped', victim))} dropped; slot moved after "
        f"{[round(c.t - killed, 2) for c in moved]} s by the lease path; "
        f"rejected {dict(sim.rejected)}"
    )
    verdicts = sim.decided("server_failed", victim)
    assert len(verdicts) == 1
    assert verdicts[0].t - killed <= VERDICT_BOUND_S
