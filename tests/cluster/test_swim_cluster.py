"""Fifty detectors over an in-memory network on fake time: noise, a crash, and a cut-off agent."""

from __future__ import annotations

from agent.swim.detector import DetectorConfig
from tests.cluster.swimsim import SwimSim

N = 50
CONFIG = DetectorConfig()
# One probe cycle: every peer once, one period each (unscaled awareness).
CYCLE_S = (N - 1) * CONFIG.probe_interval_s


def test_no_failures_with_lossy_links_rarely_yield_a_false_report() -> None:
    sim = SwimSim(N, seed=1, loss=(0.0, 0.05), config=CONFIG)
    sim.run_until(60.0)
    false_reports = sim.unreachable()
    timeouts = sum(n.detector.stats["timeouts"] for n in sim.nodes.values())
    probes = sum(n.detector.stats["probes_sent"] for n in sim.nodes.values())
    print(
        f"\n(a) {probes} periodic probes, {timeouts} direct timeouts, "
        f"{len(false_reports)} false unreachable reports"
    )
    # Each probe period needs every path (direct and 3 indirect, ~2.5 % loss per hop) to fail.
    assert probes >= N * 60.0 / CONFIG.probe_interval_s * 0.95
    assert timeouts > 0  # the loss did bite
    assert len(false_reports) <= 3
    assert all(not n.rejected for n in sim.nodes.values())  # no replay or skew false positives
    assert max(n.detector.awareness.score for n in sim.nodes.values()) < 4


def test_a_killed_server_is_reported_by_several_observers_and_confirmed_by_all() -> None:
    sim = SwimSim(N, seed=2, loss=(0.0, 0.01), config=CONFIG)
    sim.run_until(10.0)
    victim = sim.rng.choice(sim.names)
    sim.kill(victim)
    live = [name for name in sim.names if name != victim]
    # Each observer probes the victim once per cycle, at a uniformly random place in it, so
    # about half of them get to it within half a cycle; every one within two cycles.
    sim.run_until(10.0 + 2 * CYCLE_S + 1.0)
    first: dict[str, float] = {}
    for seen in sim.unreachable(since=10.0):
        if seen.report.target == victim:
            first.setdefault(seen.observer, seen.report.at - 10.0)
    early = sorted(t for t in first.values() if t <= 5.0)
    print(f"\n(b) {len(early)} observers within 5 s, first after {min(first.values()):.2f} s")
    assert len(early) >= 3
    assert set(first) == set(live)
    assert [s for s in sim.unreachable() if s.report.target != victim] == []
    report = next(s.report for s in sim.seen if s.report.target == victim)
    assert report.evidence["direct"] == "timeout" and len(report.evidence["indirect"]) == 3  # type: ignore[arg-type]

    started = sim.now
    for name in live:
        sim.confirm(name, victim)
    # A witness reports unreachable only after `confirm_attempts` probes in a row failed.
    attempts = CONFIG.confirm_attempts
    sim.run_until(started + (attempts + 1) * CONFIG.probe_interval_s)
    confirms = [s for s in sim.seen if s.report.evidence["kind"] == "confirm"]
    assert sorted(s.observer for s in confirms) == live
    assert all(not s.report.reachable and s.report.target == victim for s in confirms)
    assert all(s.report.evidence["attempt"] == attempts for s in confirms)
    deadline = started + attempts * (CONFIG.probe_interval_s + 0.011)
    assert all(s.report.at <= deadline for s in confirms)

    # A confirm of a live server says so.
    mark = len(sim.seen)
    sim.confirm(live[0], live[1])
    sim.run_until(sim.now + 0.1)
    later = [s for s in sim.seen[mark:] if s.report.evidence["kind"] == "confirm"]
    assert [(s.observer, s.report.target, s.report.reachable) for s in later] == [
        (live[0], live[1], True)
    ]


def test_a_cut_off_server_goes_quiet_and_is_reported_by_the_others() -> None:
    sim = SwimSim(N, seed=3, loss=(0.0, 0.05), config=CONFIG)
    sim.run_until(5.0)
    cut = sim.rng.choice(sim.names)
    sim.network.isolate(cut)
    node = sim.nodes[cut].detector
    suppress_at = CONFIG.awareness_max // 2
    # Every failed period costs a point and stretches the next: suppressed after
    # interval * (1 + 2 + ... + suppress_at) seconds.
    quiet_after_s = CONFIG.probe_interval_s * suppress_at * (suppress_at + 1) / 2
    sim.run_until(5.0 + quiet_after_s + 0.1)
    assert node.awareness.suppressed
    sim.run_until(35.0)

    accusations = [s for s in sim.unreachable(since=5.0) if s.observer == cut]
    print(
        f"\n(c) cut-off {cut}: {len(accusations)} reports, then "
        f"{node.stats['suppressed_reports']} suppressed; awareness {node.awareness.score}"
    )
    assert len(accusations) <= suppress_at
    assert all(s.report.at <= 5.0 + quiet_after_s + 0.1 for s in accusations)
    assert node.stats["suppressed_reports"] >= 5
    assert node.awareness.score == CONFIG.awareness_max

    noise = [s for s in sim.unreachable() if s.observer != cut and s.report.target != cut]
    assert len(noise) <= 3
    reporters = {s.observer for s in sim.unreachable() if s.report.target == cut}
    assert len(reporters) >= 3

    # Healed, it trusts itself again one successful direct probe at a time.
    sim.network.heal()
    sim.run_until(35.0 + sum(CONFIG.probe_interval_s * k for k in range(1, 10)) + 1.0)
    assert not node.awareness.suppressed
