"""SyncObjConsensus: the cluster state replicated by Raft (pysyncobj); the one module using it.

pysyncobj runs its own tick thread. Log entries are applied there, by the same pure
`apply_payload` that every replica runs; results and status are handed to asyncio with
`loop.call_soon_threadsafe`. Nothing in the tick thread blocks or touches asyncio objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated

from consensus.commands import Command, encode_command
from consensus.machine import apply_payload
from consensus.protocol import ConsensusError, RaftStatus, Snapshot, SubmitResult, Timer
from consensus.state import ClusterState, StateDecodeError, decode_state, encode_state

_log = logging.getLogger("moonwatch.consensus")

# Fail reasons after which the same command may simply be sent again (deduplicated by id).
_RETRYABLE: Final = frozenset(
    {
        FAIL_REASON.QUEUE_FULL,
        FAIL_REASON.MISSING_LEADER,
        FAIL_REASON.DISCARDED,
        FAIL_REASON.NOT_LEADER,
        FAIL_REASON.LEADER_CHANGED,
        FAIL_REASON.REQUEST_DENIED,
        FAIL_REASON.UNKNOWN_OUTCOME,
    }
)
# Since pysyncobj 0.3.12 the first vote request on an idle follower-to-follower connection
# closes it and costs a whole election round; a huge idle timeout avoids it. Dead peers are
# still found by TCP keepalive and the leader steps down by leaderFallbackTimeout.
_IDLE_CONNECTION_TIMEOUT_S: Final = 3600.0
_TCP_KEEPALIVE: Final = (2, 1, 3)


@dataclass(frozen=True, slots=True)
class RaftSettings:
    """Where this node sits in the Raft group and how fast the group reacts."""

    server: str
    voters: Mapping[str, str]  # voter name -> "host:port"
    password: str
    journal_dir: Path
    election_min_s: float = 0.4
    election_max_s: float = 1.2
    leader_fallback_s: float = 1.0
    append_entries_period_s: float = 0.1
    log_compaction_entries: int = 5000
    # Raft addresses of every server that may become a voter (voters are always included).
    peers: Mapping[str, str] = field(default_factory=dict)

    @property
    def voter(self) -> bool:
        return self.server in self.voters

    def addresses(self) -> dict[str, str]:
        return {**self.peers, **self.voters}


class _Replica(SyncObjConsumer):  # type: ignore[misc]  # pysyncobj ships no type information
    """The replicated object: one method, applied in log order on every node."""

    def __init__(self, on_applied: Callable[[], None]) -> None:
        super().__init__()
        self.state = ClusterState()
        self._on_applied = on_applied

    @replicated  # type: ignore[untyped-decorator]  # pysyncobj is untyped
    def apply_entry(self, payload: str) -> tuple[str, str, bool]:
        try:
            self.state, result = apply_payload(self.state, payload)
        except Exception:  # noqa: BLE001  # a raising entry would wedge the tick thread forever
            _log.exception("log entry could not be applied; state unchanged")
            return ("rejected", "internal error while applying the entry", False)
        self._on_applied()
        return (result.status, result.reason, result.stale)

    def _serialize(self) -> dict[str, str]:
        return {"state": encode_state(self.state)}

    def _deserialize(self, data: dict[str, Any]) -> None:
        try:
            self.state = decode_state(data["state"])
        except (KeyError, TypeError, StateDecodeError):
            _log.exception("raft snapshot holds no readable cluster state; starting empty")
            self.state = ClusterState()
        self._on_applied()


class SyncObjConsensus:
    """Consensus over pysyncobj. Voters take part in elections; other servers follow the log
    read-only and forward their commands to the leader."""

    def __init__(self, settings: RaftSettings, timer: Timer) -> None:
        self._settings = settings
        self._timer = timer
        self._names = {address: name for name, address in settings.addresses().items()}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._syncobj: Any = None
        self._replica: _Replica | None = None
        self._snapshot = Snapshot(ClusterState(), RaftStatus(settings.server, settings.voter))
        self._dirty = False
        self._tick_key: tuple[object, ...] = ()
        # After a restart of the Raft node, publish nothing older than what was published.
        self._floor = 0
        self._membership_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        settings = self._settings
        self_address = settings.voters.get(settings.server)
        if self_address is not None:
            _check_port_free(self_address)
        try:
            settings.journal_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConsensusError(
                f"cannot create journal directory {settings.journal_dir}: {exc}"
            ) from exc
        others = [a for n, a in sorted(settings.voters.items()) if n != settings.server]
        self._replica = _Replica(self._on_applied)
        try:
            self._syncobj = SyncObj(self_address, others, self._conf(), consumers=[self._replica])
        except Exception as exc:  # pysyncobj raises bare exceptions on bad journals
            raise ConsensusError(f"raft node could not start: {exc!r}") from exc
        self._syncobj.addOnTickCallback(self._on_tick)

    def _conf(self) -> Any:
        s = self._settings
        return SyncObjConf(
            password=s.password,
            autoTick=True,
            appendEntriesUseBatch=False,
            useFork=False,
            commandsWaitLeader=False,
            connectionTimeout=_IDLE_CONNECTION_TIMEOUT_S,
            tcp_keepalive=_TCP_KEEPALIVE,
            leaderFallbackTimeout=s.leader_fallback_s,
            raftMinTimeout=s.election_min_s,
            raftMaxTimeout=s.election_max_s,
            appendEntriesPeriod=s.append_entries_period_s,
            connectionRetryTime=0.5,
            journalFile=str(s.journal_dir / "raft.journal"),
            fullDumpFile=str(s.journal_dir / "raft.dump"),
            logCompactionMinEntries=s.log_compaction_entries,
            dynamicMembershipChange=True,
        )

    async def stop(self) -> None:
        syncobj, self._syncobj = self._syncobj, None
        if syncobj is None:
            return
        syncobj.removeOnTickCallback(self._on_tick)
        syncobj.destroy()
        deadline = self._timer.monotonic() + 2.0
        while syncobj.tick_thread_alive() and self._timer.monotonic() < deadline:
            await self._timer.sleep(0.02)

    async def rejoin(self, voters: tuple[str, ...]) -> None:
        """Restart the Raft node for a new membership, from the same journal."""
        known = self._settings.addresses()
        missing = [v for v in voters if v not in known]
        if missing or not voters:
            raise ConsensusError(f"cannot rejoin: no Raft address for voters {missing or voters}")
        async with self._membership_lock:
            self._floor = self._snapshot.raft.last_applied
            await self.stop()
            self._settings = replace(self._settings, voters={v: known[v] for v in voters})
            _log.warning("raft node restarting for voters %s", ",".join(voters))
            if not self._settings.voter:
                # A node that no longer votes may hold a term from elections it tried alone;
                # the leader's entries would look stale to it forever. It needs no durable
                # term or log: it fetches both from the leader again.
                self._forget_journal()
            # Until the new node has found a leader it is on its own: say so at once.
            raft = RaftStatus(
                self._settings.server,
                self._settings.voter,
                term=self._snapshot.raft.term,
                commit_index=self._snapshot.raft.commit_index,
                last_applied=self._snapshot.raft.last_applied,
                members=tuple(sorted(voters)),
            )
            self._tick_key = ()
            self._snapshot = Snapshot(self._snapshot.state, raft, self._snapshot.version + 1)
            self._changed.set()
            await self.start()

    def _forget_journal(self) -> None:
        journal = self._settings.journal_dir
        for path in journal.glob("raft.*"):
            try:
                path.unlink()
            except OSError as exc:
                raise ConsensusError(f"cannot remove old raft journal {path}: {exc}") from exc

    async def add_voter(self, server: str, timeout_s: float) -> SubmitResult:
        address = self._settings.addresses().get(server)
        if address is None:
            return SubmitResult("rejected", f"no Raft address for {server}")
        if server in self._snapshot.raft.members:
            return SubmitResult("committed", "already a voter")
        deadline = self._timer.monotonic() + timeout_s
        while not await _listening(address):  # adding a node that is not there stalls commits
            if self._timer.monotonic() >= deadline:
                return SubmitResult("failed", f"{server} does not listen on {address}")
            await self._timer.sleep(0.1)
        return await self._change("addNodeToCluster", address, deadline)

    async def remove_voter(self, server: str, timeout_s: float) -> SubmitResult:
        address = self._settings.addresses().get(server)
        if address is None:
            return SubmitResult("rejected", f"no Raft address for {server}")
        if server not in self._snapshot.raft.members:
            return SubmitResult("committed", "not a voter")
        return await self._change("removeNodeFromCluster", address, self._timer.monotonic() + 10)

    async def _change(self, method: str, address: str, deadline: float) -> SubmitResult:
        loop = asyncio.get_running_loop()
        async with self._membership_lock:
            syncobj = self._syncobj
            if syncobj is None or not self._snapshot.raft.is_leader:
                return SubmitResult("failed", "only the leader changes the voters")
            future: asyncio.Future[tuple[Any, int]] = loop.create_future()

            def done(result: Any, err: int) -> None:  # runs in the tick thread
                loop.call_soon_threadsafe(_resolve, future, (result, err))

            getattr(syncobj, method)(address, callback=done)
            try:
                remaining = max(0.1, deadline - self._timer.monotonic())
                _, err = await asyncio.wait_for(future, remaining)
            except TimeoutError:
                return SubmitResult("failed", f"{method} {address}: no commit in time")
        if err != FAIL_REASON.SUCCESS:
            return SubmitResult("failed", f"{method} {address}: {_fail_text(err)}")
        return SubmitResult("committed")

    # ------------------------------------------------------------------ reading
    def snapshot(self) -> Snapshot:
        return self._snapshot

    async def wait_changed(self, since: int, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                while self._snapshot.version <= since:
                    self._changed.clear()
                    if self._snapshot.version > since:
                        break
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ writing
    async def submit(self, command: Command, timeout_s: float) -> SubmitResult:
        payload = encode_command(command)
        deadline = self._timer.monotonic() + timeout_s
        backoff_s = 0.02
        last = "no leader"
        while self._replica is not None and self._syncobj is not None:
            remaining = deadline - self._timer.monotonic()
            if remaining <= 0:
                break
            result, err = await self._submit_once(payload, remaining)
            if err == FAIL_REASON.SUCCESS and result is not None:
                status, reason, stale = result
                return SubmitResult(status, reason, stale)
            last = _fail_text(err)
            if err not in _RETRYABLE:
                break
            await self._timer.sleep(min(backoff_s, max(0.0, deadline - self._timer.monotonic())))
            backoff_s = min(backoff_s * 2, 0.25)
        return SubmitResult("failed", f"not committed within {timeout_s:.1f} s: {last}")

    async def _submit_once(self, payload: str, timeout_s: float) -> tuple[Any, int | None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, int]] = loop.create_future()

        def done(result: Any, err: int) -> None:  # runs in the tick thread
            loop.call_soon_threadsafe(_resolve, future, (result, err))

        assert self._replica is not None
        self._replica.apply_entry(payload, callback=done)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return None, None

    # ------------------------------------------------------------------ tick thread
    def _on_applied(self) -> None:
        self._dirty = True
        self._on_tick()

    def _on_tick(self) -> None:
        """Publish a new snapshot when the state or the Raft view changed (tick thread)."""
        syncobj, replica = self._syncobj, self._replica
        if syncobj is None or replica is None:
            return
        leader_node = syncobj._getLeader()
        if (
            leader_node is not None
            and not syncobj._isLeader()
            and not syncobj.isNodeConnected(leader_node)
        ):
            # pysyncobj keeps naming the last leader while cut off from every node (it starts
            # no election without a connection); without a link there is no leader to us.
            leader_node = None
        key = (
            leader_node,
            syncobj.raftCurrentTerm,
            syncobj._isLeader(),
            syncobj.raftCommitIndex,
            syncobj.raftLastApplied,
            len(syncobj.otherNodes),
        )
        if key == self._tick_key and not self._dirty:
            return  # the common case, twenty times a second: nothing changed
        self._tick_key = key
        leader = None if leader_node is None else self._names.get(leader_node.address)
        status = RaftStatus(
            server=self._settings.server,
            voter=self._settings.voter,
            leader=leader,
            term=syncobj.raftCurrentTerm,
            is_leader=syncobj._isLeader(),
            commit_index=syncobj.raftCommitIndex,
            last_applied=syncobj.raftLastApplied,
            ready=leader is not None,
            members=self._members(syncobj),
        )
        if status == self._snapshot.raft and not self._dirty:
            return
        self._dirty = False
        # A restarted node replaying its journal has older state than it published before.
        state = replica.state if syncobj.raftLastApplied >= self._floor else self._snapshot.state
        self._snapshot = Snapshot(state, status, self._snapshot.version + 1)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed between check and call
                loop.call_soon_threadsafe(self._changed.set)

    def _members(self, syncobj: Any) -> tuple[str, ...]:
        nodes = list(syncobj.otherNodes)
        if syncobj.selfNode is not None:
            nodes.append(syncobj.selfNode)
        return tuple(sorted(self._names.get(n.address, n.address) for n in nodes))


async def _listening(address: str) -> bool:
    """Whether something accepts TCP connections at `address` (a connect, closed at once)."""
    host, _, port = address.rpartition(":")
    try:
        async with asyncio.timeout(0.5):
            _, writer = await asyncio.open_connection(host, int(port))
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _resolve(future: asyncio.Future[tuple[Any, int]], value: tuple[Any, int]) -> None:
    if not future.done():
        future.set_result(value)


def _fail_text(err: int | None) -> str:
    names = {
        None: "no answer in time",
        FAIL_REASON.QUEUE_FULL: "queue full",
        FAIL_REASON.MISSING_LEADER: "no leader",
        FAIL_REASON.DISCARDED: "discarded by a new leader",
        FAIL_REASON.NOT_LEADER: "sent to a node that is not the leader",
        FAIL_REASON.LEADER_CHANGED: "leader changed",
        FAIL_REASON.REQUEST_DENIED: "request denied",
        FAIL_REASON.UNKNOWN_OUTCOME: "unknown outcome",
    }
    return names.get(err, f"fail reason {err}")


def _check_port_free(address: str) -> None:
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            why = (
                "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound: {exc}"
            )
            raise ConsensusError(f"raft port {address} {why}") from exc
