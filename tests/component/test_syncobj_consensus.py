"""SyncObjConsensus over real pysyncobj on 127.0.0.1: elections, fail-over, restarts, intruders."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pickle
import random
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated

from consensus.commands import (
    Bootstrap,
    Command,
    DropSuspicion,
    MarkServerFailed,
    ReportProbe,
    ServerSpec,
    ServerUp,
    SlotSpec,
    encode_command,
)
from consensus.protocol import ConsensusError, RaftStatus, SubmitResult
from consensus.state import ClusterState, encode_state
from consensus.syncobj_consensus import RaftSettings, SyncObjConsensus

VOTERS = ("m1", "m2", "m3")
PASSWORD = "correct horse battery staple"
SUBMIT_S = 10.0
ELECTION_S = 10.0
BOOT = Bootstrap(
    id="c-boot",
    at=100.0,
    cluster="moon",
    config_digest="sha256:cafe",
    servers=(
        ServerSpec(name="m1", role="active", domain="rack-a"),
        ServerSpec(name="m2", role="active", domain="rack-b"),
        ServerSpec(name="m3", role="active", domain="rack-c"),
        ServerSpec(name="m4", role="spare", domain="rack-d"),
    ),
    slots=(SlotSpec(name="s1", owner="m1", tenants=("acme",)),),
    lease_s=5.0,
)
COMMITTED = SubmitResult("committed")
# pysyncobj 0.3.17 reads an existing journal's .meta file with `open(path).read()` and never
# closes it (journal.py MetaStorer.getMeta); under filterwarnings=error that fails every restart.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:unclosed file <_io\.BufferedReader name='[^']*raft\.journal\.meta'>:ResourceWarning"
)


def up(server: str, incarnation: int = 1) -> ServerUp:
    return ServerUp(
        id=f"up-{server}-{incarnation}", at=101.0, server=server, incarnation=incarnation
    )


class Timer:
    """Real time, as the agent's clock gives it."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `predicate` until it holds (True) or `timeout_s` has passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        await asyncio.sleep(0.02)
    return True


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now; the sockets are closed again before the ports are used."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class Cluster:
    """Voters m1..m3 on free loopback ports, journals under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.voters = {
            name: f"127.0.0.1:{port}"
            for name, port in zip(VOTERS, free_ports(len(VOTERS)), strict=True)
        }
        self.nodes: dict[str, SyncObjConsensus] = {}
        self.log_compaction_entries: int | None = None  # None: RaftSettings' default

    async def start(self, *names: str) -> None:
        for name in names or VOTERS:
            settings = RaftSettings(
                server=name, voters=self.voters, password=PASSWORD, journal_dir=self.root / name
            )
            if self.log_compaction_entries is not None:
                settings = dataclasses.replace(
                    settings, log_compaction_entries=self.log_compaction_entries
                )
            # Registered before start() so that the fixture stops it whatever happens.
            self.nodes[name] = node = SyncObjConsensus(settings, Timer())
            await node.start()

    async def stop(self, *names: str) -> None:
        for name in names or tuple(self.nodes):
            await self.nodes.pop(name).stop()

    def raft(self, name: str) -> RaftStatus:
        return self.nodes[name].snapshot().raft

    def state(self, name: str) -> ClusterState:
        return self.nodes[name].snapshot().state

    def encoded(self) -> set[str]:
        return {encode_state(self.state(name)) for name in self.nodes}

    def describe(self) -> str:
        return "; ".join(f"{name}: {self.raft(name)}" for name in self.nodes)

    async def wait_leader(self, timeout_s: float = ELECTION_S) -> str:
        """Wait until every running node names the same leader and that node knows it leads."""

        def agreed() -> bool:
            leaders = {self.raft(name).leader for name in self.nodes}
            if len(leaders) != 1:
                return False
            leader = leaders.pop()
            return leader in self.nodes and self.raft(leader).is_leader

        assert await wait_until(agreed, timeout_s), self.describe()
        leader = self.raft(next(iter(self.nodes))).leader
        assert leader is not None
        return leader

    async def wait_applied(self, applied: int, timeout_s: float = SUBMIT_S) -> ClusterState:
        """Wait until every running node has applied `applied` entries into the same state."""

        def done() -> bool:
            states = [self.state(name) for name in self.nodes]
            return all(s.applied == applied for s in states) and len(self.encoded()) == 1

        assert await wait_until(done, timeout_s), [self.state(n).applied for n in self.nodes]
        return self.state(next(iter(self.nodes)))

    async def bootstrap(self, via: str) -> ClusterState:
        assert await self.nodes[via].submit(BOOT, SUBMIT_S) == COMMITTED
        return await self.wait_applied(1)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    group = Cluster(tmp_path)
    try:
        yield group
    finally:
        await group.stop()


@contextlib.asynccontextmanager
async def raw_syncobj(
    self_address: str | None,
    partners: Sequence[str],
    password: str | None,
    consumers: Sequence[SyncObjConsumer] = (),
) -> AsyncIterator[Any]:
    """A SyncObj built directly, as an intruder or a careless deployment would; destroyed after."""
    conf = SyncObjConf(
        password=password,
        autoTick=True,
        useFork=False,
        appendEntriesUseBatch=False,
        connectionRetryTime=0.2,
    )
    node = SyncObj(self_address, list(partners), conf, consumers=list(consumers))
    try:
        yield node
    finally:
        node.destroy()
        assert await wait_until(lambda: not node.tick_thread_alive(), 5.0)


class Intruder(SyncObjConsumer):  # type: ignore[misc]  # pysyncobj is untyped
    """Names its replicated method as consensus.syncobj_consensus does, as a copy of it would."""

    @replicated  # type: ignore[untyped-decorator]  # pysyncobj is untyped
    def apply_entry(self, payload: str) -> tuple[str, str, bool]:
        return ("committed", "", False)


class Plant:
    """Unpickling it creates a directory: proof that a peer ran our bytes through pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def frame(data: bytes) -> bytes:
    """pysyncobj's wire framing: a native 4-byte length, then the message."""
    return struct.pack("i", len(data)) + data


def hostile_payloads(marker: Path) -> list[tuple[bytes, bool]]:
    """(bytes, complete): a complete message is parsed at once; the rest leave the peer waiting."""
    pickled = pickle.dumps(Plant(marker))
    return [
        (frame(zlib.compress(pickled, 3)), True),  # what a password-less pysyncobj unpickles
        (frame(pickled), True),
        (frame(random.Random(8).randbytes(512)), True),
        (struct.pack("i", -5) + b"abc", True),
        (b"\x00" * 8, True),
        (pickled, False),
        (random.Random(7).randbytes(4096), False),
        (struct.pack("i", 2**31 - 1) + b"x" * 64, False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
    ]


def send_raw(address: str, data: bytes, linger_s: float = 0.3) -> bool:
    """Send bytes with a plain socket and keep it open until the peer hangs up (True) or
    `linger_s` passes (False). Closing at once would let pysyncobj drop the unread message."""
    with socket.create_connection(host_port(address), timeout=5.0) as sock:
        try:
            sock.sendall(data)
            sock.settimeout(linger_s)
            while sock.recv(4096):
                pass
        except TimeoutError:
            return False
        except OSError:  # reset by the peer: it hung up
            return True
        return True


# ------------------------------------------------------------------ elections and commits


async def test_three_voters_elect_one_leader_they_all_agree_on(cluster: Cluster) -> None:
    await cluster.start()

    leader = await cluster.wait_leader()

    views = {name: cluster.raft(name) for name in VOTERS}
    assert [name for name, view in views.items() if view.is_leader] == [leader]
    assert all(view.voter and view.ready for view in views.values())
    assert len({view.term for view in views.values()}) == 1
    follower = next(name for name in VOTERS if name != leader)
    state = await cluster.bootstrap(via=follower)
    assert state.cluster == "moon"
    assert state.decisions[0].kind == "bootstrap"


async def test_a_read_only_node_follows_the_leader_and_submits(cluster: Cluster) -> None:
    await cluster.start(*VOTERS, "m4")
    leader = await cluster.wait_leader()
    assert leader in VOTERS
    reader = cluster.raft("m4")
    assert (reader.voter, reader.is_leader, reader.ready) == (False, False, True)

    await cluster.bootstrap(via="m4")
    assert await cluster.nodes["m4"].submit(up("m4"), SUBMIT_S) == COMMITTED

    state = await cluster.wait_applied(2)
    server = state.server("m4")
    assert server is not None and server.state == "up"


async def test_rejections_come_back_from_the_state_machine(cluster: Cluster) -> None:
    await cluster.start()
    await cluster.wait_leader()
    await cluster.bootstrap(via="m1")

    result = await cluster.nodes["m2"].submit(dataclasses.replace(BOOT, id="c-boot-2"), SUBMIT_S)

    assert (result.status, result.stale) == ("rejected", True)
    assert "already bootstrapped" in result.reason
    again = await cluster.nodes["m2"].submit(BOOT, SUBMIT_S)  # a retry of what did commit
    assert (again.status, again.reason) == ("committed", "already committed")
    state = await cluster.wait_applied(1)
    assert state.decision_seq == 1


async def test_the_survivors_elect_a_new_leader_and_commit(cluster: Cluster) -> None:
    await cluster.start()
    old_leader = await cluster.wait_leader()
    await cluster.bootstrap(via=old_leader)
    stopped = cluster.nodes[old_leader]
    term = cluster.raft(old_leader).term

    await cluster.stop(old_leader)

    new_leader = await cluster.wait_leader()
    assert new_leader != old_leader
    assert cluster.raft(new_leader).term > term
    survivor = next(iter(cluster.nodes))
    assert await cluster.nodes[survivor].submit(up(survivor), SUBMIT_S) == COMMITTED
    state = await cluster.wait_applied(2)
    assert state.decisions[-1].kind == "server_up"
    # The stopped node refuses work at once, and stopping it again is harmless.
    failed = await stopped.submit(up(old_leader), 1.0)
    assert failed.status == "failed"
    await stopped.stop()


# ------------------------------------------------------------------ restarts from the journal


@pytest.mark.parametrize(
    "log_compaction_entries",
    [
        pytest.param(None, id="log-replay"),
        pytest.param(2, id="snapshot-install"),
    ],
)
async def test_a_restarted_follower_catches_up_from_its_journal(
    cluster: Cluster, log_compaction_entries: int | None
) -> None:
    cluster.log_compaction_entries = log_compaction_entries
    await cluster.start()
    leader = await cluster.wait_leader()
    await cluster.bootstrap(via=leader)
    follower = next(name for name in VOTERS if name != leader)
    await cluster.stop(follower)
    assert (cluster.root / follower).is_dir()
    assert await cluster.nodes[leader].submit(up(leader), SUBMIT_S) == COMMITTED

    await cluster.start(follower)

    state = await cluster.wait_applied(2)
    assert cluster.state(follower) == state
    assert await cluster.nodes[follower].submit(up(follower), SUBMIT_S) == COMMITTED
    await cluster.wait_applied(3)


async def test_a_whole_cluster_restarted_from_its_journals_keeps_its_state(
    cluster: Cluster,
) -> None:
    await cluster.start()
    leader = await cluster.wait_leader()
    await cluster.bootstrap(via=leader)
    for name in VOTERS:
        assert await cluster.nodes[name].submit(up(name), SUBMIT_S) == COMMITTED
    before = encode_state(await cluster.wait_applied(4))

    await cluster.stop()
    await cluster.start()

    await cluster.wait_leader()
    assert encode_state(await cluster.wait_applied(4)) == before
    assert await cluster.nodes["m2"].submit(up("m2", 2), SUBMIT_S) == COMMITTED
    await cluster.wait_applied(5)


async def test_a_cluster_restarted_from_raft_snapshots_keeps_its_state(cluster: Cluster) -> None:
    """With a tiny compaction threshold the journals are cut down to a snapshot, so the state
    can only come back through the replica's serialize/deserialize."""
    cluster.log_compaction_entries = 2
    await cluster.start()
    leader = await cluster.wait_leader()
    await cluster.bootstrap(via=leader)
    for name in VOTERS:
        assert await cluster.nodes[name].submit(up(name), SUBMIT_S) == COMMITTED
    before = encode_state(await cluster.wait_applied(4))
    dumps = [cluster.root / name / "raft.dump" for name in VOTERS]
    assert await wait_until(lambda: all(dump.exists() for dump in dumps), 10.0)

    await cluster.stop()
    await cluster.start()

    await cluster.wait_leader()
    assert encode_state(await cluster.wait_applied(4)) == before
    assert await cluster.nodes["m3"].submit(up("m3", 2), SUBMIT_S) == COMMITTED
    await cluster.wait_applied(5)


def probe(observer: str, target: str, *, reachable: bool = False) -> ReportProbe:
    return ReportProbe(
        id=f"probe-{observer}-{target}-{reachable}",
        at=102.0,
        observer=observer,
        target=target,
        incarnation=1,
        reachable=reachable,
        evidence={"rtt_ms": None, "via": ["m3"], "loss": 0.5},
    )


async def test_suspicions_verdicts_and_lost_slots_survive_raft_snapshots(
    cluster: Cluster,
) -> None:
    """Suspicions with their reports, a lost slot and a quarantined server come back through
    the replica's serialize/deserialize exactly as they were committed."""
    cluster.log_compaction_entries = 2
    await cluster.start()
    leader = await cluster.wait_leader()
    await cluster.bootstrap(via=leader)
    history: list[tuple[str, Command]] = [
        *((name, up(name)) for name in VOTERS),
        ("m2", up("m4")),
        ("m2", probe("m2", "m1")),
        ("m3", probe("m3", "m1", reachable=True)),
        ("m2", MarkServerFailed(id="fail-m1", at=103.0, server="m1", incarnation=1)),
        ("m1", up("m1", 2)),  # its agent restarts: quarantined
        ("m1", probe("m4", "m3")),  # any node submits; m4 runs no Raft node here
        ("m2", probe("m2", "m3", reachable=True)),
    ]
    for submitter, command in history:
        assert await cluster.nodes[submitter].submit(command, SUBMIT_S) == COMMITTED, command
    state = await cluster.wait_applied(1 + len(history))
    assert [(s.name, s.state) for s in state.servers] == [
        ("m1", "quarantined"),
        ("m2", "up"),
        ("m3", "up"),
        ("m4", "up"),
    ]
    slot = state.slot("s1")
    assert slot is not None and (slot.state, slot.owner) == ("lost", "m1")
    suspicion = state.suspicion("m3")
    assert suspicion is not None and len(suspicion.reports) == 2
    before = encode_state(state)
    dumps = [cluster.root / name / "raft.dump" for name in VOTERS]
    assert await wait_until(lambda: all(dump.exists() for dump in dumps), 10.0)

    await cluster.stop()
    await cluster.start()

    await cluster.wait_leader()
    assert encode_state(await cluster.wait_applied(1 + len(history))) == before
    drop = DropSuspicion(id="drop-m3", at=104.0, target="m3", incarnation=1, reason="timeout")
    assert await cluster.nodes["m2"].submit(drop, SUBMIT_S) == COMMITTED
    assert (await cluster.wait_applied(2 + len(history))).suspicions == ()


# ------------------------------------------------------------------ hostile peers


@pytest.mark.parametrize(
    ("password", "admitted"),
    [
        pytest.param(None, False, id="no-password"),
        pytest.param("wrong password", False, id="wrong-password"),
        pytest.param(PASSWORD, True, id="control-right-password"),
    ],
)
async def test_only_a_peer_with_the_cluster_password_can_commit(
    cluster: Cluster, password: str | None, admitted: bool
) -> None:
    await cluster.start()
    await cluster.wait_leader()
    await cluster.bootstrap(via="m1")
    before = cluster.encoded()
    outcomes: list[tuple[Any, Any]] = []
    intruder = Intruder()

    async with raw_syncobj(None, list(cluster.voters.values()), password, [intruder]) as rogue:
        intruder.apply_entry(
            encode_command(up("m1", 9)), callback=lambda *outcome: outcomes.append(outcome)
        )
        if admitted:
            state = await cluster.wait_applied(2)
            server = state.server("m1")
            assert server is not None and server.incarnation == 9
        else:
            changed = await wait_until(lambda: cluster.encoded() != before, 2.0)
            assert not changed, "a peer without the password changed the cluster state"
            assert rogue._getLeader() is None
            assert all(cluster.state(name).applied == 1 for name in VOTERS)
            assert all(result is None for result, _ in outcomes)


async def test_a_pickle_on_the_raft_port_runs_on_a_node_without_a_password(
    tmp_path: Path,
) -> None:
    """The control for the next test: the payload is a working exploit against pysyncobj."""
    marker = tmp_path / "pwned"
    address = f"127.0.0.1:{free_ports(1)[0]}"
    exploit, _ = hostile_payloads(marker)[0]
    async with raw_syncobj(address, [], None):
        assert await wait_until(lambda: accepts(address), 5.0)
        _, writer = await asyncio.open_connection(*host_port(address))
        try:
            writer.write(exploit)
            await writer.drain()
            assert await wait_until(marker.exists, 5.0)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def accepts(address: str) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(host_port(address), timeout=1):
        return True
    return False


async def test_garbage_and_pickles_on_the_raft_port_change_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start()
    leader = await cluster.wait_leader()
    await cluster.bootstrap(via=leader)
    before = cluster.encoded()
    marker = tmp_path / "pwned"

    async def attack(address: str) -> None:
        for payload, complete in hostile_payloads(marker):
            hung_up = await asyncio.to_thread(send_raw, address, payload)
            assert hung_up or not complete, f"{address} did not reject {payload[:16]!r}"

    await asyncio.gather(*(attack(address) for address in cluster.voters.values()))

    assert not marker.exists(), "a voter unpickled bytes from an unauthenticated peer"
    assert cluster.encoded() == before
    await cluster.wait_leader()
    for incarnation, name in enumerate(VOTERS, start=1):
        assert await cluster.nodes[name].submit(up(name, incarnation), SUBMIT_S) == COMMITTED
    await cluster.wait_applied(4)
    assert not marker.exists()


# ------------------------------------------------------------------ start-up errors


async def test_a_taken_port_is_a_consensus_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        address = f"127.0.0.1:{port}"
        settings = RaftSettings(
            server="m1",
            voters={"m1": address, "m2": "127.0.0.1:1", "m3": "127.0.0.1:2"},
            password=PASSWORD,
            journal_dir=tmp_path / "m1",
        )
        node = SyncObjConsensus(settings, Timer())
        try:
            with pytest.raises(ConsensusError, match=f"raft port {address} is already in use"):
                await node.start()
            failed = await node.submit(BOOT, 0.5)
            assert failed.status == "failed"
        finally:
            await node.stop()
