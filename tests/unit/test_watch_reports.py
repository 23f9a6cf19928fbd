"""What an agent's failure detector submits to Raft: a routine probe adds nothing to a
suspicion already committed, and a witness's confirm vote is retried while nothing commits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.clock import SystemClock
from agent.config import load_config
from agent.swim.probe import ProbeReport
from agent.watch import Watch
from consensus.commands import Command, ReportProbe
from consensus.protocol import RaftStatus, Snapshot, SubmitResult
from consensus.state import ClusterState, Suspicion
from tests.support import cluster_config, write_config


@dataclass
class Recorder:
    """Just enough of a Consensus: a fixed snapshot, and scripted answers to submit."""

    state: ClusterState
    answers: list[SubmitResult]
    submitted: list[Command] = field(default_factory=list)

    def snapshot(self) -> Snapshot:
        return Snapshot(self.state, RaftStatus("a1", voter=True))

    async def submit(self, command: Command, timeout_s: float) -> SubmitResult:
        self.submitted.append(command)
        return self.answers.pop(0) if self.answers else SubmitResult("committed")


def watch(tmp_path: Path, consensus: Recorder) -> Watch:
    path = write_config(tmp_path / "cluster.yml", cluster_config(tmp_path / "data"))
    return Watch(load_config(path), "a1", consensus, SystemClock(), 1)  # type: ignore[arg-type]


def report(kind: str) -> ProbeReport:
    return ProbeReport("a2", 1, False, 10.0, {"kind": kind, "direct": "timeout"})


SUSPECTED = ClusterState(cluster="test", suspicions=(Suspicion("a2", 1, 9.0),))


async def test_a_routine_report_on_a_suspected_server_is_not_submitted(tmp_path: Path) -> None:
    consensus = Recorder(SUSPECTED, [])
    await watch(tmp_path, consensus).submit_report(report("periodic"))
    assert consensus.submitted == []
    await watch(tmp_path, consensus).submit_report(report("confirm"))
    assert [type(c) for c in consensus.submitted] == [ReportProbe]


async def test_a_routine_report_opens_a_suspicion(tmp_path: Path) -> None:
    consensus = Recorder(ClusterState(cluster="test"), [])
    await watch(tmp_path, consensus).submit_report(report("periodic"))
    assert len(consensus.submitted) == 1


async def test_a_confirm_vote_is_retried_with_the_same_id_while_nothing_commits(
    tmp_path: Path,
) -> None:
    no_leader = SubmitResult("failed", "no leader")
    consensus = Recorder(SUSPECTED, [no_leader, no_leader])
    await watch(tmp_path, consensus).submit_report(report("confirm"))
    assert len(consensus.submitted) == 3
    assert len({c.id for c in consensus.submitted}) == 1


async def test_a_refused_report_is_not_sent_again(tmp_path: Path) -> None:
    consensus = Recorder(SUSPECTED, [SubmitResult("rejected", "a2 is failed", stale=True)])
    await watch(tmp_path, consensus).submit_report(report("confirm"))
    assert len(consensus.submitted) == 1
