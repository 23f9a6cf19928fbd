"""VoterKeeper over MemoryConsensus: the leader replaces a failed voter, every agent follows."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.voters import (
    VoterKeeper,
    VoterSettings,
    fetch_peer_voters,
    read_voters,
    write_voters,
)
from consensus.commands import (
    Bootstrap,
    Command,
    MarkServerFailed,
    ServerSpec,
    ServerUp,
    SlotSpec,
    VoterStep,
)
from consensus.memory import MemoryConsensus, MemoryLog
from consensus.protocol import Snapshot, SubmitResult
from consensus.state import ClusterState

NAMES = ("m1", "m2", "m3", "m4", "m5")
VOTERS = ("m1", "m2", "m3")
WALL = 1_700_000_000.0
TIMEOUT_S = 2.0
REFRESH_S = 10.0
BOOT = Bootstrap(
    id="c-boot",
    at=WALL,
    cluster="moon",
    config_digest="sha256:cafe",
    servers=(
        ServerSpec(name="m1", role="active", domain="rack-a"),
        ServerSpec(name="m2", role="active", domain="rack-b"),
        ServerSpec(name="m3", role="active", domain="rack-c"),
        ServerSpec(name="m4", role="spare", domain="rack-d"),
        ServerSpec(name="m5", role="spare", domain="rack-e"),
    ),
    slots=(
        SlotSpec(name="s1", owner="m1", tenants=("acme",)),
        SlotSpec(name="s2", owner="m2", tenants=("globex",)),
    ),
    lease_s=5.0,
    voters=VOTERS,
)


class FakeClock:
    """Time moves only when the test sets it or someone sleeps; wall follows monotonic."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL + (self.now - 1000.0)

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class SpyConsensus(MemoryConsensus):
    """MemoryConsensus that records the membership calls made on it."""

    def __init__(self, log: MemoryLog, server: str, clock: FakeClock) -> None:
        super().__init__(log, server, clock)
        self.rejoins: list[tuple[str, ...]] = []
        self.calls: list[tuple[str, str]] = []

    async def rejoin(self, voters: tuple[str, ...]) -> None:
        self.rejoins.append(voters)
        await super().rejoin(voters)

    async def add_voter(self, server: str, timeout_s: float) -> SubmitResult:
        self.calls.append(("add_voter", server))
        return await super().add_voter(server, timeout_s)

    async def remove_voter(self, server: str, timeout_s: float) -> SubmitResult:
        self.calls.append(("remove_voter", server))
        return await super().remove_voter(server, timeout_s)


@dataclass
class Peers:
    """A fake `peer_voters`: a canned answer per status URL, and the URLs it was asked."""

    answers: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def __call__(self, url: str) -> tuple[str, ...] | None:
        self.asked.append(url)
        return self.answers.get(url)


def url(name: str) -> str:
    return f"http://{name}.test/v1/status"


@dataclass
class Cluster:
    log: MemoryLog
    clock: FakeClock
    nodes: dict[str, SpyConsensus]
    tmp_path: Path

    def state(self, name: str = "m1") -> ClusterState:
        return self.nodes[name].snapshot().state

    async def commit(self, *commands: Command) -> None:
        for command in commands:
            assert await self.nodes["m1"].submit(command, TIMEOUT_S) == SubmitResult("committed")

    def voters_file(self, name: str) -> Path:
        return self.tmp_path / name / "voters.json"

    def keeper(
        self,
        name: str,
        *,
        replace_voters: bool = True,
        peers: Peers | None = None,
        peer_status_urls: dict[str, str] | None = None,
    ) -> VoterKeeper:
        urls = peer_status_urls
        if urls is None:
            urls = {n: url(n) for n in NAMES if n != name}
        settings = VoterSettings(
            server=name,
            replace_voters=replace_voters,
            voters_file=self.voters_file(name),
            peer_status_urls=urls,
            refresh_after_s=REFRESH_S,
        )
        return VoterKeeper(settings, self.nodes[name], self.clock, peers or Peers())

    def decisions(self) -> list[tuple[str, str]]:
        return [(d.kind, d.subject) for d in self.state().decisions]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Voters m1..m3 (m1 leads), spares m4 and m5; bootstrapped, everyone up."""
    log = MemoryLog(voters=VOTERS)
    clock = FakeClock()
    nodes = {name: SpyConsensus(log, name, clock) for name in NAMES}
    for node in nodes.values():
        await node.start()
    log.elect("m1")
    result = Cluster(log, clock, nodes, tmp_path)
    await result.commit(
        BOOT, *(ServerUp(id=f"up-{n}", at=WALL, server=n, incarnation=1) for n in NAMES)
    )
    try:
        yield result
    finally:
        for node in nodes.values():
            await node.stop()


def fail(server: str) -> MarkServerFailed:
    return MarkServerFailed(id=f"fail-{server}", at=WALL + 1, server=server, incarnation=1)


def prepare(add: str = "m4", remove: str = "m3") -> VoterStep:
    return VoterStep(
        id=f"prepare-{add}-{remove}", at=WALL + 2, step="prepare", add=add, remove=remove
    )


async def fail_m3(cluster: Cluster) -> None:
    """m3 is declared failed and its node is gone for good."""
    await cluster.commit(fail("m3"))
    cluster.log.down.add("m3")
    cluster.log.isolate("m3")


async def step(keeper: VoterKeeper, node: MemoryConsensus) -> None:
    await keeper.step(node.snapshot())


def with_raft(snap: Snapshot, **changes: Any) -> Snapshot:
    return dataclasses.replace(snap, raft=dataclasses.replace(snap.raft, **changes))


# ------------------------------------------------------------------ (a) the leader replaces


async def test_the_leader_replaces_a_failed_voter_add_before_remove(cluster: Cluster) -> None:
    await fail_m3(cluster)
    keeper, leader = cluster.keeper("m1"), cluster.nodes["m1"]
    seen = []

    for _ in range(4):
        await step(keeper, leader)
        change = cluster.state().voter_change
        seen.append((cluster.log.voters, change.step if change else None))

    assert seen == [
        (("m1", "m2", "m3"), "prepare"),
        (("m1", "m2", "m3", "m4"), "added"),
        (("m1", "m2", "m4"), None),
        (("m1", "m2", "m4"), None),  # nothing left to do
    ]
    assert leader.calls == [("add_voter", "m4"), ("remove_voter", "m3")]
    assert cluster.state().voters == ("m1", "m2", "m4")
    assert cluster.decisions()[-4:] == [
        ("server_failed", "m3"),
        ("voter_replacement_started", "m3"),
        ("voter_added", "m4"),
        ("voter_removed", "m3"),
    ]


async def test_every_node_applies_the_replacement(cluster: Cluster) -> None:
    await fail_m3(cluster)
    keeper = cluster.keeper("m1")
    for _ in range(3):
        await step(keeper, cluster.nodes["m1"])

    for name in ("m2", "m4", "m5"):
        state = cluster.state(name)
        assert (state.voters, state.voter_change) == (("m1", "m2", "m4"), None), name


async def test_the_leader_stores_the_voters_after_the_replacement(cluster: Cluster) -> None:
    await fail_m3(cluster)
    keeper, leader = cluster.keeper("m1"), cluster.nodes["m1"]
    for _ in range(4):  # the last step sees the committed removal
        await step(keeper, leader)

    assert read_voters(cluster.voters_file("m1")) == ("m1", "m2", "m4")


async def test_a_newcomer_that_never_answers_is_abandoned_after_the_timeout(
    cluster: Cluster,
) -> None:
    await fail_m3(cluster)
    cluster.log.down.add("m4")  # m4's node never restarts as a voter
    keeper, leader = cluster.keeper("m1"), cluster.nodes["m1"]
    await step(keeper, leader)  # prepare
    started = cluster.clock.now

    await step(keeper, leader)  # add fails: m4 does not answer
    cluster.clock.now = started + 30.0
    await step(keeper, leader)  # exactly at the timeout: tries once more
    assert leader.calls == [("add_voter", "m4"), ("add_voter", "m4")]
    change = cluster.state().voter_change
    assert change is not None and change.step == "prepare"

    cluster.clock.now = started + 30.5
    await step(keeper, leader)

    assert cluster.state().voter_change is None
    assert cluster.log.voters == VOTERS
    assert cluster.decisions()[-1] == ("voter_replacement_abandoned", "m3")


async def test_a_new_leader_finishes_its_predecessors_change(cluster: Cluster) -> None:
    """m1 prepared and added m4, then lost office before recording it: m2 takes over."""
    await fail_m3(cluster)
    await cluster.commit(prepare())
    assert (await cluster.nodes["m1"].add_voter("m4", TIMEOUT_S)).ok
    cluster.log.elect("m2")
    keeper, leader = cluster.keeper("m2"), cluster.nodes["m2"]

    await step(keeper, leader)  # record_added: Raft already counts m4
    await step(keeper, leader)  # remove

    assert leader.calls == [("remove_voter", "m3")]
    assert (cluster.state().voters, cluster.log.voters) == (("m1", "m2", "m4"),) * 2
    assert cluster.decisions()[-3:] == [
        ("voter_replacement_started", "m3"),
        ("voter_added", "m4"),
        ("voter_removed", "m3"),
    ]


async def test_a_follower_does_not_replace_voters(cluster: Cluster) -> None:
    await fail_m3(cluster)
    before = cluster.state()

    await step(cluster.keeper("m2"), cluster.nodes["m2"])

    assert cluster.state() is before
    assert cluster.nodes["m2"].calls == []


# ------------------------------------------------------------------ (b) switched off


async def test_without_replace_voters_the_leader_leaves_a_failed_voter(cluster: Cluster) -> None:
    await fail_m3(cluster)
    before = cluster.state()
    keeper, leader = cluster.keeper("m1", replace_voters=False), cluster.nodes["m1"]

    for _ in range(3):
        await step(keeper, leader)

    assert cluster.state() is before
    assert cluster.log.voters == VOTERS
    assert leader.calls == []


# ------------------------------------------------------------------ (c), (d) following


async def test_the_newcomer_restarts_as_a_voter_once_the_change_is_prepared(
    cluster: Cluster,
) -> None:
    await fail_m3(cluster)
    await cluster.commit(prepare())

    await step(cluster.keeper("m4"), cluster.nodes["m4"])

    assert cluster.nodes["m4"].rejoins == [("m1", "m2", "m3", "m4")]


async def test_the_leaders_prepare_makes_the_newcomer_rejoin(cluster: Cluster) -> None:
    await fail_m3(cluster)
    await step(cluster.keeper("m1"), cluster.nodes["m1"])
    newcomer = cluster.keeper("m4")

    await step(newcomer, cluster.nodes["m4"])

    assert cluster.nodes["m4"].rejoins == [("m1", "m2", "m3", "m4")]


async def test_a_restarted_node_replaying_its_journal_acts_on_no_past_change(
    cluster: Cluster,
) -> None:
    """Replaying, m4 passes through the change that once made it a voter, and through the old
    voters: it neither rejoins for that change nor stores those voters to start with."""
    await fail_m3(cluster)
    await cluster.commit(prepare())
    stored = cluster.voters_file("m4")
    write_voters(stored, ("m1", "m2", "m4"))
    replaying = with_raft(cluster.nodes["m4"].snapshot(), commit_index=40, last_applied=12)

    await cluster.keeper("m4").step(replaying)

    assert cluster.nodes["m4"].rejoins == []
    assert read_voters(stored) == ("m1", "m2", "m4")
    caught_up = with_raft(replaying, last_applied=40)
    await cluster.keeper("m4").step(caught_up)
    assert cluster.nodes["m4"].rejoins == [("m1", "m2", "m3", "m4")]  # now it is current


async def test_another_non_voter_does_not_rejoin_for_the_change(cluster: Cluster) -> None:
    await fail_m3(cluster)
    await cluster.commit(prepare())

    await step(cluster.keeper("m5"), cluster.nodes["m5"])

    assert cluster.nodes["m5"].rejoins == []


async def test_a_newcomer_already_a_voter_does_not_rejoin_again(cluster: Cluster) -> None:
    await fail_m3(cluster)
    await cluster.commit(prepare())
    cluster.log.voters = ("m1", "m2", "m3", "m4")

    await step(cluster.keeper("m4"), cluster.nodes["m4"])

    assert cluster.nodes["m4"].rejoins == []


async def test_a_rejoining_newcomer_does_not_lead_in_the_same_step(cluster: Cluster) -> None:
    """Following comes first: a pass that restarts the node does nothing else."""
    await fail_m3(cluster)
    await cluster.commit(prepare())
    node = cluster.nodes["m4"]
    snap = with_raft(node.snapshot(), is_leader=True, leader="m4")

    await cluster.keeper("m4").step(snap)

    assert node.rejoins == [("m1", "m2", "m3", "m4")]
    assert node.calls == []


async def test_a_voter_left_out_of_the_committed_voters_rejoins_with_them(
    cluster: Cluster,
) -> None:
    cluster.log.voters = ("m1", "m2", "m3", "m5")  # m5's Raft layer still counts itself

    await step(cluster.keeper("m5"), cluster.nodes["m5"])

    assert cluster.nodes["m5"].rejoins == [VOTERS]


async def test_a_voter_left_out_does_not_rejoin_while_a_change_is_under_way(
    cluster: Cluster,
) -> None:
    await fail_m3(cluster)
    await cluster.commit(prepare())
    cluster.log.voters = ("m1", "m2", "m3", "m5")

    await step(cluster.keeper("m5"), cluster.nodes["m5"])

    assert cluster.nodes["m5"].rejoins == []


async def test_a_committed_voter_does_not_rejoin(cluster: Cluster) -> None:
    await step(cluster.keeper("m2"), cluster.nodes["m2"])
    assert cluster.nodes["m2"].rejoins == []


# ------------------------------------------------------------------ (e) refresh without a leader

AGREED_ELSEWHERE = ("m1", "m2", "m4")


def cut_off(cluster: Cluster, name: str, answers: dict[str, tuple[str, ...] | None]) -> Peers:
    cluster.log.isolate(name)
    return Peers({url(n): a for n, a in answers.items()})


async def test_without_a_leader_the_keeper_asks_its_peers_after_refresh_after_s(
    cluster: Cluster,
) -> None:
    peers = cut_off(cluster, "m5", {"m1": AGREED_ELSEWHERE})
    keeper, node = cluster.keeper("m5", peers=peers), cluster.nodes["m5"]
    start = cluster.clock.now

    cluster.clock.now = start + REFRESH_S - 0.5
    await step(keeper, node)
    assert (peers.asked, node.rejoins) == ([], [])

    cluster.clock.now = start + REFRESH_S
    await step(keeper, node)
    assert sorted(peers.asked) == sorted(url(n) for n in ("m1", "m2", "m3", "m4"))
    assert node.rejoins == [AGREED_ELSEWHERE]


async def test_the_keeper_does_not_ask_again_within_refresh_after_s(cluster: Cluster) -> None:
    peers = cut_off(cluster, "m5", {"m1": AGREED_ELSEWHERE})
    keeper, node = cluster.keeper("m5", peers=peers), cluster.nodes["m5"]
    start = cluster.clock.now
    cluster.clock.now = start + REFRESH_S
    await step(keeper, node)
    asked = len(peers.asked)

    cluster.clock.now = start + 2 * REFRESH_S - 0.5
    await step(keeper, node)
    assert (len(peers.asked), len(node.rejoins)) == (asked, 1)

    cluster.clock.now = start + 2 * REFRESH_S
    await step(keeper, node)
    assert (len(peers.asked), len(node.rejoins)) == (2 * asked, 2)


async def test_a_leader_seen_postpones_the_refresh(cluster: Cluster) -> None:
    peers = Peers({url("m1"): AGREED_ELSEWHERE})
    keeper, node = cluster.keeper("m5", peers=peers), cluster.nodes["m5"]
    start = cluster.clock.now
    cluster.clock.now = start + 5.0
    await step(keeper, node)  # connected: m1 leads
    cluster.log.isolate("m5")

    cluster.clock.now = start + REFRESH_S
    await step(keeper, node)
    assert peers.asked == []

    cluster.clock.now = start + 5.0 + REFRESH_S
    await step(keeper, node)
    assert node.rejoins == [AGREED_ELSEWHERE]


async def test_a_node_with_a_leader_never_asks(cluster: Cluster) -> None:
    peers = Peers({url("m1"): AGREED_ELSEWHERE})
    keeper, node = cluster.keeper("m5", peers=peers), cluster.nodes["m5"]
    for waited in (REFRESH_S, 10 * REFRESH_S):
        cluster.clock.now += waited
        await step(keeper, node)
    assert (peers.asked, node.rejoins) == ([], [])


@pytest.mark.parametrize(
    "answers",
    [
        pytest.param({}, id="nobody-answers"),
        pytest.param({"m1": (), "m2": ()}, id="only-empty-answers"),
    ],
)
async def test_no_rejoin_when_no_peer_answers(
    cluster: Cluster, answers: dict[str, tuple[str, ...] | None]
) -> None:
    peers = cut_off(cluster, "m5", answers)
    keeper, node = cluster.keeper("m5", peers=peers), cluster.nodes["m5"]

    cluster.clock.now += REFRESH_S
    await step(keeper, node)

    assert len(peers.asked) == 4
    assert node.rejoins == []


async def test_a_silent_peer_is_skipped_for_the_next_answer(cluster: Cluster) -> None:
    peers = cut_off(cluster, "m5", {"m1": None, "m2": AGREED_ELSEWHERE, "m3": VOTERS})
    keeper, node = cluster.keeper("m5", peers=peers), cluster.nodes["m5"]

    cluster.clock.now += REFRESH_S
    await step(keeper, node)

    assert node.rejoins == [AGREED_ELSEWHERE]


@pytest.mark.parametrize(
    ("members", "voter", "agreed", "rejoins"),
    [
        pytest.param(VOTERS, False, VOTERS, False, id="same-voters-same-role"),
        pytest.param(VOTERS, False, ("m3", "m1", "m2"), False, id="same-voters-other-order"),
        pytest.param(VOTERS, False, AGREED_ELSEWHERE, True, id="other-voters"),
        pytest.param(VOTERS, False, ("m1", "m2", "m3", "m5"), True, id="it-is-now-a-voter"),
        pytest.param(VOTERS, True, VOTERS, True, id="it-is-no-longer-a-voter"),
    ],
)
async def test_the_keeper_rejoins_only_when_members_or_role_differ(
    cluster: Cluster,
    members: tuple[str, ...],
    voter: bool,
    agreed: tuple[str, ...],
    rejoins: bool,
) -> None:
    peers = cut_off(cluster, "m5", {"m1": agreed})
    keeper, node = cluster.keeper("m5", peers=peers), cluster.nodes["m5"]
    snap = with_raft(node.snapshot(), members=members, voter=voter)
    if voter:  # commit m5 as a voter, or _follow would rejoin before the refresh is reached
        snap = dataclasses.replace(
            snap, state=dataclasses.replace(snap.state, voters=("m1", "m2", "m3", "m5"))
        )

    cluster.clock.now += REFRESH_S
    await keeper.step(snap)

    assert node.rejoins == ([agreed] if rejoins else [])


# ------------------------------------------------------------------ (f) remembered voters


async def test_every_keeper_stores_the_committed_voters(cluster: Cluster) -> None:
    await step(cluster.keeper("m5"), cluster.nodes["m5"])

    path = cluster.voters_file("m5")
    assert json.loads(path.read_text()) == list(VOTERS)
    assert read_voters(path) == VOTERS


async def test_voters_on_disk_are_not_rewritten_when_unchanged(cluster: Cluster) -> None:
    path = cluster.voters_file("m5")
    path.parent.mkdir(parents=True)
    path.write_text('[ "m1", "m2", "m3" ]')

    await step(cluster.keeper("m5"), cluster.nodes["m5"])

    assert path.read_text() == '[ "m1", "m2", "m3" ]'


async def test_nothing_is_stored_before_the_voters_are_known(tmp_path: Path) -> None:
    clock = FakeClock()
    node = MemoryConsensus(MemoryLog(voters=VOTERS), "m1", clock)
    await node.start()
    path = tmp_path / "voters.json"
    settings = VoterSettings("m1", True, path, {}, refresh_after_s=REFRESH_S)

    await VoterKeeper(settings, node, clock, Peers()).step(node.snapshot())

    assert not path.exists()


def test_voters_round_trip_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "raft" / "voters.json"
    write_voters(path, ("m1", "m2", "m4"))
    assert read_voters(path) == ("m1", "m2", "m4")
    write_voters(path, ("m2",))
    assert read_voters(path) == ("m2",)
    assert [p.name for p in path.parent.iterdir()] == ["voters.json"]  # no .tmp left behind


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("[not json", id="garbage"),
        pytest.param('{"voters": ["m1"]}', id="object"),
        pytest.param('"m1"', id="string"),
        pytest.param('["m1", 2]', id="not-all-names"),
        pytest.param(b"\xff\xfe", id="not-text"),
    ],
)
def test_unreadable_voters_read_as_none(tmp_path: Path, text: str | bytes | None) -> None:
    path = tmp_path / "voters.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    assert read_voters(path) == ()


def test_a_directory_in_the_way_reads_as_none(tmp_path: Path) -> None:
    assert read_voters(tmp_path) == ()


def test_writing_voters_where_it_cannot_is_best_effort(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    write_voters(blocker / "voters.json", ("m1",))  # parent is a file: logged, not raised
    assert read_voters(blocker / "voters.json") == ()


# ------------------------------------------------------------------ (g) fetch_peer_voters

Handler = Callable[[web.Request], Any]


def json_at(body: Any, status: int = 200) -> Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    return handler


def text_at(body: str, content_type: str) -> Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(text=body, content_type=content_type)

    return handler


ROUTES: dict[str, Handler] = {
    "/leader": json_at({"leader": "m1", "voters": ["m1", "m2", "m3"]}),
    "/no-leader": json_at({"leader": None, "voters": ["m1", "m2", "m3"]}),
    "/no-leader-key": json_at({"voters": ["m1", "m2", "m3"]}),
    "/bad-json": text_at("{not json", "application/json"),
    "/html": text_at("<html></html>", "text/html"),
    "/voters-not-a-list": json_at({"leader": "m1", "voters": "m1"}),
    "/voters-not-names": json_at({"leader": "m1", "voters": ["m1", 2]}),
    "/no-voters": json_at({"leader": "m1", "voters": []}),
    "/missing-voters": json_at({"leader": "m1"}),
    "/a-list": json_at(["m1", "m2"]),
    "/error": json_at({"leader": "m1", "voters": ["m1"]}, status=500),
}


@pytest.fixture
async def status_server() -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in ROUTES.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_fetch_peer_voters_returns_the_voters_of_a_peer_with_a_leader(
    status_server: str,
) -> None:
    assert await fetch_peer_voters(f"{status_server}/leader") == ("m1", "m2", "m3")


@pytest.mark.parametrize(
    "path",
    [
        "/no-leader",
        "/no-leader-key",
        "/bad-json",
        "/html",
        "/voters-not-a-list",
        "/voters-not-names",
        "/no-voters",
        "/missing-voters",
        "/a-list",
        "/error",
        "/not-found",
    ],
)
async def test_fetch_peer_voters_gives_none_for_an_unusable_answer(
    status_server: str, path: str
) -> None:
    assert await fetch_peer_voters(f"{status_server}{path}") is None


async def test_fetch_peer_voters_gives_none_on_a_closed_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert await fetch_peer_voters(f"http://127.0.0.1:{port}/v1/status") is None


async def test_the_keeper_asks_real_peers_by_default(cluster: Cluster, status_server: str) -> None:
    cluster.log.isolate("m5")
    urls = {"m1": f"{status_server}/no-leader", "m2": f"{status_server}/leader"}
    keeper = VoterKeeper(
        VoterSettings("m5", True, cluster.voters_file("m5"), urls, refresh_after_s=REFRESH_S),
        cluster.nodes["m5"],
        cluster.clock,
    )
    cluster.log.voters = ("m1", "m2")  # m5's Raft layer has a stale membership

    cluster.clock.now += REFRESH_S
    await step(keeper, cluster.nodes["m5"])

    assert cluster.nodes["m5"].rejoins == [VOTERS]


async def test_a_newcomer_waiting_to_be_added_does_not_ask_its_peers_until_the_change_is_stale(
    cluster: Cluster,
) -> None:
    await fail_m3(cluster)
    await cluster.commit(prepare())
    peers = Peers({url("m1"): ("m1", "m2", "m3")})
    keeper, node = cluster.keeper("m4", peers=peers), cluster.nodes["m4"]
    start = cluster.clock.now
    await step(keeper, node)  # restarts as a full node, not yet counted by anyone
    assert node.rejoins == [("m1", "m2", "m3", "m4")]
    cluster.log.isolate("m4")  # a full node nobody has added hears from no leader

    cluster.clock.now = start + 40.0
    await step(keeper, node)
    assert (peers.asked, len(node.rejoins)) == ([], 1)

    cluster.clock.now = start + 46.0  # the leader gave up on it long ago: ask, rejoin as agreed
    await step(keeper, node)
    assert peers.asked and node.rejoins[-1] == ("m1", "m2", "m3")
