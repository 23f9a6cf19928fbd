"""Publishes the cluster's events to MQTT: the Raft leader each committed decision, every
agent its own server's state (retained, with a last will), through broker outages.

Nothing in the decision path waits on this: it reads snapshots, keeps events in a bounded
buffer while the broker is away, reconnects with capped backoff and sends the buffer in
order once back. See agent.events for the delivery contract (ids de-duplicate).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiomqtt
import structlog

from agent.clock import Clock
from agent.config import MqttConfig
from agent.events import (
    DEFAULT_BUFFER,
    EventBuffer,
    cursor_document,
    cursor_seq,
    cursor_topic,
    encode,
    events_topic,
    missed,
    offline_document,
    pending_events,
    resume_after,
    server_document,
    server_topic,
    state_key,
)
from agent.mqtt import BACKOFF_MAX_S, BACKOFF_MIN_S, keep_connected, pause
from consensus.protocol import Consensus, Snapshot

WATCH_TIMEOUT_S: Final = 1.0
_log = structlog.get_logger("moonwatch.events")


def describe_error(exc: BaseException, username: str | None) -> str:
    """What went wrong with the broker, in words an operator can act on."""
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "not authorized" in lowered or "bad user name or password" in lowered:
        who = f"user {username!r}" if username else "anonymous connections"
        return f"the broker refused {who} ({text}): check mqtt.username and the password"
    return text


@dataclass
class PublisherCounts:
    connects: int = 0
    disconnects: int = 0
    published: int = 0
    handed_over: int = 0
    # Retained cursors that were not a cursor document (ignored: anyone may publish there).
    bad_cursors: int = 0


class EventPublisher:
    """One agent's events connection. `run` returns when `stopping` is set and never raises
    for a dead broker, a refused login or a failed publish."""

    def __init__(
        self,
        config: MqttConfig,
        cluster: str,
        server: str,
        consensus: Consensus,
        clock: Clock,
        *,
        capacity: int = DEFAULT_BUFFER,
        connect_timeout_s: float = 2.0,
        publish_timeout_s: float = 2.0,
        keepalive_s: int = 5,
        cursor_wait_s: float = 1.0,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.server_topic = server_topic(config.topic_prefix, cluster, server)
        self.cursor_topic = cursor_topic(config.topic_prefix, cluster)
        self.buffer = EventBuffer(capacity)
        self.counts = PublisherCounts()
        self.last_error: str | None = None
        self._config, self._cluster, self._server = config, cluster, server
        self._consensus, self._clock = consensus, clock
        self._timeouts = (connect_timeout_s, publish_timeout_s, cursor_wait_s)
        self._keepalive_s = keepalive_s
        self._backoff = (backoff_min_s, backoff_max_s)
        self._wake = asyncio.Event()
        self._cursor_arrived = asyncio.Event()
        self._connected = False
        self._leading = False
        self._cursor_known = False  # a retained cursor was read, or there was none to read
        self._seen: int | None = None  # the highest cursor seen on the broker
        self._acked: int | None = None  # the highest decision this agent had acknowledged
        self._queued = 0  # the highest decision put in the buffer while leading
        self._document: dict[str, Any] | None = None
        self._sent_key: tuple[object, ...] | None = None
        # This agent's own events (topic, payload), oldest first; bounded like the buffer.
        self._local: deque[tuple[str, bytes]] = deque()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def seen_cursor(self) -> int | None:
        """The furthest decision the broker's cursor said was published, if it said any."""
        return self._seen

    def status(self) -> dict[str, Any]:
        """The `mqtt` block of /v1/status."""
        return {
            "connected": self._connected,
            "buffered": len(self.buffer) + len(self._local),
            "dropped": self.buffer.dropped,
            "rejected_cursors": self.counts.bad_cursors,
            "last_error": self.last_error,
        }

    def publish_local(self, kind: str, document: Mapping[str, Any]) -> None:
        """Publish an event of this agent itself (e.g. resource_degraded), not a committed
        decision: QoS 1 on events/<kind>, in order, held while the broker is away (the oldest
        dropped and counted when full); whether or not this agent leads. Never blocks."""
        if len(self._local) >= self.buffer.capacity:
            self._local.popleft()
            self.buffer.lost(1)
        topic = events_topic(self._config.topic_prefix, self._cluster, kind)
        self._local.append((topic, encode(document)))
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        watcher = asyncio.ensure_future(self._watch(stopping))
        try:
            await keep_connected(self._session, self._clock, stopping, self._backoff)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    # ------------------------------------------------------------ committed state

    async def _watch(self, stopping: asyncio.Event) -> None:
        version = -1
        while not stopping.is_set():
            try:
                await self._consensus.wait_changed(version, WATCH_TIMEOUT_S)
                snap = self._consensus.snapshot()
                version = snap.version
                self.refresh(snap)
            except Exception:  # noqa: BLE001 - a bad snapshot must not end the events
                _log.exception("events_refresh_failed")
                await pause(self._clock, stopping, WATCH_TIMEOUT_S)

    def refresh(self, snap: Snapshot) -> None:
        """Take this server's state and, when leading, the new decisions from `snap`."""
        document = server_document(snap, self._server, self._clock.wall())
        if self._document is None or state_key(document) != state_key(self._document):
            self._document = document
            self._wake.set()
        if not (snap.raft.is_leader and snap.state.bootstrapped):
            self._step_down()
            return
        if not self._cursor_known:
            return  # wait for the broker's cursor before deciding where to start
        decisions = snap.state.decisions
        if not self._leading:
            self._leading = True
            self._queued = resume_after(self._seen, self._acked, snap.state.decision_seq)
            self.buffer.lost(missed(decisions, self._queued))
            _log.info("events_leading", after=self._queued)
        fresh = pending_events(decisions, self._queued, self._config.topic_prefix, self._cluster)
        for event in fresh:
            self.buffer.push(event)
            self._queued = event.seq
        if fresh:
            self._wake.set()

    def _step_down(self) -> None:
        """Not the leader (any more): the new leader publishes from the last cursor."""
        if self._leading and len(self.buffer):
            count = self.buffer.clear()
            self.counts.handed_over += count
            _log.info("events_handed_over", unsent=count)
        self._leading = False

    # ------------------------------------------------------------ the broker

    async def _session(self, stopping: asyncio.Event) -> bool:
        """One connection until it breaks or `stopping` is set; True if it was connected."""
        login = self._config.login
        offline = encode(offline_document(self._server))
        client = aiomqtt.Client(
            self._config.host,
            self._config.port,
            username=login[0] if login else None,
            password=login[1] if login else None,
            identifier=f"moonwatch-events-{self._server}-{secrets.token_hex(6)}",
            timeout=self._timeouts[0],
            keepalive=self._keepalive_s,
            will=aiomqtt.Will(self.server_topic, offline, qos=1, retain=True),
        )
        connected = False
        try:
            async with client:
                connected = True
                self._note_connected()
                await client.subscribe(self.cursor_topic, qos=1)
                await self._serve(client, stopping)
        except aiomqtt.MqttError as exc:
            self._note_failed(describe_error(exc, login[0] if login else None))
        except Exception as exc:  # noqa: BLE001 - a client bug must not end the events for good
            _log.exception("events_client_failed")
            self._note_failed(f"{type(exc).__name__}: {exc}")
        finally:
            self._connected = False
            self._sent_key = None
        return connected

    async def _serve(self, client: aiomqtt.Client, stopping: asyncio.Event) -> None:
        tasks = [
            asyncio.ensure_future(self._read(client)),
            asyncio.ensure_future(self._write(client)),
            asyncio.ensure_future(stopping.wait()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks[:2]:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error
        if stopping.is_set():  # a clean stop says so; the will is for deaths
            document = offline_document(self._server, self._clock.wall())
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(
                    self.server_topic, encode(document), qos=1, retain=True, timeout=1.0
                )
        else:
            raise aiomqtt.MqttError("connection lost")

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            seq = cursor_seq(bytes(payload)) if isinstance(payload, bytes | bytearray) else None
            if seq is not None:
                self._seen = max(self._seen or 0, seq)
            elif payload:  # an empty retained message only clears the cursor
                self.counts.bad_cursors += 1
            self._cursor_arrived.set()

    async def _write(self, client: aiomqtt.Client) -> None:
        await self._send_state(client)
        if not self._cursor_known:
            await pause(self._clock, self._cursor_arrived, self._timeouts[2])
            self._cursor_known = True
            self.refresh(self._consensus.snapshot())
        while True:
            self._wake.clear()
            await self._send_state(client)
            await self._flush(client)
            await self._flush_local(client)
            await self._wake.wait()

    async def _send_state(self, client: aiomqtt.Client) -> None:
        document = self._document
        if document is None or state_key(document) == self._sent_key:
            return
        await client.publish(
            self.server_topic, encode(document), qos=1, retain=True, timeout=self._timeouts[1]
        )
        self._sent_key = state_key(document)

    async def _flush(self, client: aiomqtt.Client) -> None:
        """Send the buffer in order, each event removed once acknowledged; then the cursor."""
        last = None
        while (event := self.buffer.first()) is not None:
            await client.publish(event.topic, event.payload, qos=1, timeout=self._timeouts[1])
            self.buffer.done(event)
            self.counts.published += 1
            self._acked = max(self._acked or 0, event.seq)
            last = event
        if last is not None:
            cursor = encode(cursor_document(last, self._server, self._clock.wall()))
            await client.publish(
                self.cursor_topic, cursor, qos=1, retain=True, timeout=self._timeouts[1]
            )

    async def _flush_local(self, client: aiomqtt.Client) -> None:
        while self._local:
            topic, payload = self._local[0]
            await client.publish(topic, payload, qos=1, timeout=self._timeouts[1])
            if self._local and self._local[0][1] is payload:
                self._local.popleft()
            self.counts.published += 1

    def _note_connected(self) -> None:
        self._connected = True
        self.counts.connects += 1
        where = {"host": self._config.host, "port": self._config.port}
        _log.info("events_connected", **where)

    def _note_failed(self, why: str) -> None:
        if why != self.last_error:
            where = {"host": self._config.host, "port": self._config.port}
            _log.warning("events_disconnected", reason=why, **where)
        if self._connected:
            self.counts.disconnects += 1
        self.last_error = why
