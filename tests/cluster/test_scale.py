"""The scale benchmark at small sizes: crashes detected, no false verdict, a flat probe rate."""

from __future__ import annotations

from consensus.state import ClusterState, ServerRecord, Suspicion
from healer.witnesses import witnesses
from scripts.bench.scale import run_size
from tests.cluster.scalesim import ScaleSim


def test_without_loss_every_crash_gets_a_verdict_and_nobody_else_does() -> None:
    row = run_size(30, seed=4, loss=0.0, seconds=25.0, crashes=2)
    assert row["crashes"] == row["detected"] == 2
    assert row["false_verdicts"] == 0
    # Detection, agreement and the Lifeguard window: seconds, not minutes.
    assert row["verdict_max_ms"] is not None and row["verdict_max_ms"] < 5000.0
    assert row["log_entries_by_kind"]["mark_server_failed"] == 2


def test_probe_rate_per_server_does_not_grow_with_the_cluster() -> None:
    small = run_size(20, seed=5, loss=0.05, seconds=15.0, crashes=0)
    large = run_size(60, seed=5, loss=0.05, seconds=15.0, crashes=0)
    rates = small["datagrams_per_server_s"], large["datagrams_per_server_s"]
    # One probe per 0.2 s period, its ack, and the indirect round when 5 % loss bites.
    assert all(9.0 <= rate <= 20.0 for rate in rates), rates
    assert abs(rates[1] - rates[0]) <= 0.1 * rates[0], rates
    assert small["false_verdicts"] == large["false_verdicts"] == 0


def test_only_the_witnesses_confirm_a_suspicion() -> None:
    sim = ScaleSim(40, seed=6)
    sim.run_until(2.0)
    victim = sim.names[17]
    sim.kill(victim)
    sim.run_until(2.0 + 8.0)
    assert sim.crashes[victim].verdict_at is not None
    # Periodic probes of the victim by its observers, plus one confirm from each witness.
    confirms = sum(n.detector.stats["confirms"] for n in sim.swim.nodes.values())
    assert 1 <= confirms <= 7


def test_witnesses_are_bounded_deterministic_and_skip_the_target() -> None:
    servers = tuple(ServerRecord(f"m{i}", "active", "d", "up", 1) for i in range(50))
    suspicion = Suspicion("m3", 1, 12.5)
    state = ClusterState(cluster="c", servers=servers, suspicions=(suspicion,))
    chosen = witnesses(state, suspicion, 7)
    assert len(chosen) == 7 and "m3" not in chosen
    assert chosen == witnesses(state, suspicion, 7)
    assert witnesses(state, Suspicion("m3", 1, 13.0), 7) != chosen  # a new suspicion, a new set
    assert len(witnesses(state, suspicion, None)) == 49
    small = ClusterState(cluster="c", servers=servers[:5], suspicions=(suspicion,))
    assert witnesses(small, suspicion, 7) == ("m0", "m1", "m2", "m4")
