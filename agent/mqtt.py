"""How traffic reports travel: an MQTT link through the broker, and the publisher that sends
each report over it or, when that fails, straight to the leader's agent API over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Final, Literal, Protocol

import aiohttp
import aiomqtt
import structlog

from agent.clock import Clock
from agent.config import MqttConfig
from agent.reports import (
    MAX_INTERVAL_S,
    MAX_TENANTS,
    Aggregator,
    ReportError,
    TrafficReport,
    encode_report,
    top_tenants,
)
from agent.traffic_counts import TenantCounts

BACKOFF_MIN_S: Final = 0.5
BACKOFF_MAX_S: Final = 5.0
TRAFFIC_PATH: Final = "/v1/traffic"
_MAX_BOOT: Final = 2**53

_log = structlog.get_logger("moonwatch.mqtt")


async def keep_connected(
    session: Callable[[asyncio.Event], Awaitable[bool]],
    clock: Clock,
    stopping: asyncio.Event,
    backoff: tuple[float, float],
) -> None:
    """Run `session` (one connection; True if it got connected) again and again until
    `stopping` is set, pausing between attempts with exponential backoff within `backoff`
    (min, max), reset by every session that got connected."""
    delay = backoff[0]
    while not stopping.is_set():
        if await session(stopping):
            delay = backoff[0]
        if stopping.is_set():
            break
        await pause(clock, stopping, delay)
        delay = min(backoff[1], delay * 2)


async def pause(clock: Clock, stopping: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds` on `clock`, or less if `stopping` is set meanwhile."""
    if stopping.is_set():
        return
    sleep = asyncio.ensure_future(clock.sleep(seconds))
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({sleep, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleep, stop):
            task.cancel()
        await asyncio.gather(sleep, stop, return_exceptions=True)


@dataclass
class LinkStats:
    attempts: int = 0
    connects: int = 0
    disconnects: int = 0
    received: int = 0
    published: int = 0
    publish_failures: int = 0
    callback_errors: int = 0


class MqttLink:
    """One agent's connection to the broker: publishes its own reports on
    `{prefix}/{cluster}/traffic/{server}` and hands every payload on
    `{prefix}/{cluster}/traffic/+` (its own included) to `on_payload`.

    `run` keeps the connection, reconnecting with backoff (0.5 s doubling to 5 s); it returns
    when `stopping` is set and never raises for a dead broker or a bad payload. The client id
    is unique per connection, so a restarted agent never takes over an old session.
    """

    def __init__(
        self,
        config: MqttConfig,
        cluster: str,
        server: str,
        on_payload: Callable[[bytes], object],
        clock: Clock,
        *,
        publish_timeout_s: float = 0.5,
        connect_timeout_s: float = 2.0,
        keepalive_s: int = 5,
        max_queued: int = 1000,
        backoff_min_s: float = BACKOFF_MIN_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.topic = f"{config.topic_prefix}/{cluster}/traffic/{server}"
        self.subscription = f"{config.topic_prefix}/{cluster}/traffic/+"
        # Presence: "online" (retained) while connected; the broker's last will says
        # "offline" when the connection dies, so peers know who is not listening.
        self.presence_topic = f"{config.topic_prefix}/{cluster}/presence/{server}"
        self.presence_subscription = f"{config.topic_prefix}/{cluster}/presence/+"
        self._present: dict[str, bool] = {}
        self.stats = LinkStats()
        self._config = config
        self._server = server
        self._on_payload = on_payload
        self._clock = clock
        self._publish_timeout_s = publish_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._max_queued = max_queued
        self._backoff = (backoff_min_s, backoff_max_s)
        self._client: aiomqtt.Client | None = None
        self._state: bool | None = None  # connected? None before the first attempt

    @property
    def connected(self) -> bool:
        return self._client is not None

    def listening(self, server: str) -> bool:
        """Whether `server`'s agent is connected to the broker and so receives reports."""
        return self._client is not None and self._present.get(server, False)

    async def publish(self, payload: bytes) -> bool:
        """Publish with QoS 1; True once the broker acknowledged it. False, within about
        `publish_timeout_s`, when not connected or not acknowledged; never raises."""
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(self.topic, payload, qos=1, timeout=self._publish_timeout_s)
        except (aiomqtt.MqttError, ValueError, RuntimeError, OSError):
            self.stats.publish_failures += 1
            return False
        self.stats.published += 1
        return True

    async def run(self, stopping: asyncio.Event) -> None:
        """Stay connected and subscribed until `stopping` is set."""
        await keep_connected(self._session, self._clock, stopping, self._backoff)
        self._note(False, "stopping")

    async def _session(self, stopping: asyncio.Event) -> bool:
        """One connection, until it breaks or `stopping` is set; True if it was connected.
        A connect attempt is never cancelled half-way (bounded by the client's timeouts), so
        that no half-open socket is left behind."""
        login = self._config.login
        client = aiomqtt.Client(
            self._config.host,
            self._config.port,
            username=login[0] if login else None,
            password=login[1] if login else None,
            identifier=f"moonwatch-{self._server}-{secrets.token_hex(6)}",
            timeout=self._connect_timeout_s,
            keepalive=self._keepalive_s,
            max_queued_incoming_messages=self._max_queued,
            will=aiomqtt.Will(self.presence_topic, b"offline", qos=1, retain=True),
        )
        connected = False
        self.stats.attempts += 1
        try:
            async with client:
                connected = True
                await client.subscribe(self.subscription, qos=0)
                await client.subscribe(self.presence_subscription, qos=1)
                with contextlib.suppress(aiomqtt.MqttError):  # peers then post to us too
                    await client.publish(
                        self.presence_topic,
                        b"online",
                        qos=1,
                        retain=True,
                        timeout=self._publish_timeout_s,
                    )
                self._client = client
                self._note(True)
                await self._pump_until(client, stopping)
                if stopping.is_set():  # a clean stop: say so, the will is only for deaths
                    with contextlib.suppress(aiomqtt.MqttError):
                        await client.publish(
                            self.presence_topic,
                            b"offline",
                            qos=1,
                            retain=True,
                            timeout=self._publish_timeout_s,
                        )
        except aiomqtt.MqttError as exc:
            self._note(False, str(exc) or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - a client bug must not end the link for good
            _log.exception("mqtt_client_failed")
            self._note(False, f"{type(exc).__name__}: {exc}")
        finally:
            self._client = None
            self._present.clear()
        return connected

    async def _pump_until(self, client: aiomqtt.Client, stopping: asyncio.Event) -> None:
        pump = asyncio.ensure_future(self._pump(client))
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({pump, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, stop):
                task.cancel()
            await asyncio.gather(pump, stop, return_exceptions=True)
        lost = None if pump.cancelled() else pump.exception()
        if lost is not None:
            raise aiomqtt.MqttError(f"connection lost: {lost}") from lost

    async def _pump(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.topic.matches(self.presence_subscription):
                server = str(message.topic).rsplit("/", 1)[-1]
                self._present[server] = bytes(message.payload or b"") == b"online"
                if len(self._present) > 4096:  # hostile publishers: stay bounded
                    self._present.clear()
                continue
            self.stats.received += 1
            try:
                self._on_payload(bytes(message.payload))
            except Exception:  # noqa: BLE001 - a failing callback must not drop the link
                self.stats.callback_errors += 1
                if self.stats.callback_errors == 1:
                    _log.exception("mqtt_payload_callback_failed", topic=str(message.topic))

    def _note(self, connected: bool, why: str = "") -> None:
        """Log each change of connection state once (and the first failure to connect)."""
        if connected == self._state or (self._state is None and why == "stopping"):
            return
        where = {"host": self._config.host, "port": self._config.port}
        if connected:
            self.stats.connects += 1
            _log.info("mqtt_connected", **where)
        elif self._state:
            self.stats.disconnects += 1
            _log.warning("mqtt_disconnected", reason=why, **where)
        else:
            _log.warning("mqtt_unavailable", reason=why, **where)
        self._state = connected


# ---------------------------------------------------------------- publishing


class ReportLink(Protocol):
    async def publish(self, payload: bytes) -> bool:
        """Hand `payload` to the broker: True once it has it; False (never an exception)
        when not connected or not confirmed within the link's own short timeout."""


class LeaderListening:
    """A ReportLink that counts a publish as delivered only while the leader's agent is
    connected to the broker: otherwise the publisher also posts the report to the leader."""

    def __init__(self, link: MqttLink, leader: Callable[[], str | None]) -> None:
        self._link = link
        self._leader = leader

    async def publish(self, payload: bytes) -> bool:
        sent = await self._link.publish(payload)
        leader = self._leader()
        return sent and (leader is None or self._link.listening(leader))


class ReportPoster(Protocol):
    async def post(self, base_url: str, payload: bytes) -> bool:
        """POST `payload` to `base_url` + /v1/traffic: True on a 2xx answer; False (never an
        exception) on anything else or after the poster's timeout."""


class HttpReportPoster:
    """ReportPoster over aiohttp; one session, made on first use inside the running loop."""

    def __init__(self, timeout_s: float = 0.5) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def post(self, base_url: str, payload: bytes) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Content-Type": "application/octet-stream"}
        try:
            async with self._session.post(
                base_url + TRAFFIC_PATH, data=payload, headers=headers
            ) as resp:
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


SendPath = Literal["mqtt", "http", "local", "unsent"]


@dataclass
class PublisherStats:
    """Reports built, and by which path each left: MQTT, HTTP to the leader, or nowhere but
    the local aggregator ("local": no path configured or no leader to post to)."""

    reports: int = 0
    sent_mqtt: int = 0
    sent_http: int = 0
    local_only: int = 0
    mqtt_failures: int = 0
    http_failures: int = 0
    encode_failures: int = 0
    tenants_left_out: int = 0


class ReportPublisher:
    """Every `interval_s`: takes the edge's counts, signs them as the next report, keeps it in
    the local aggregator, publishes it over MQTT and, if that fails or there is no link,
    POSTs it to the leader (`leader_url()` gives its agent base URL, or None when there is no
    leader or this agent leads: then the local aggregator is all it needs)."""

    def __init__(
        self,
        *,
        cluster: str,
        server: str,
        key: bytes,
        interval_s: float,
        take: Callable[[], dict[str, TenantCounts]],
        aggregator: Aggregator,
        clock: Clock,
        link: ReportLink | None,
        poster: ReportPoster | None,
        leader_url: Callable[[], str | None],
        boot: int | None = None,
        max_tenants: int = MAX_TENANTS,
    ) -> None:
        self.stats = PublisherStats()
        self.boot = boot if boot is not None else 1 + secrets.randbelow(_MAX_BOOT - 1)
        self._cluster = cluster
        self._server = server
        self._key = key
        self._interval_s = interval_s
        self._take = take
        self._aggregator = aggregator
        self._clock = clock
        self._link = link
        self._poster = poster
        self._leader_url = leader_url
        self._max_tenants = max_tenants
        self._seq = 0
        self._last_take: float | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Publish every `interval_s` until `stopping` is set; a late round is not made up."""
        deadline = self._clock.monotonic() + self._interval_s
        while not stopping.is_set():
            await pause(self._clock, stopping, deadline - self._clock.monotonic())
            if stopping.is_set():
                break
            try:
                await self.publish_once()
            except Exception:  # noqa: BLE001 - one bad round must not end the reports
                _log.exception("traffic_report_failed")
            deadline = max(deadline + self._interval_s, self._clock.monotonic())

    async def publish_once(self) -> SendPath:
        """Build, keep and send one report; the path it took ("unsent": it could not be
        signed, or neither MQTT nor the POST to the leader took it)."""
        payload = self._build()
        if payload is None:
            self.stats.encode_failures += 1
            return "unsent"
        if self._link is not None:
            if await self._link.publish(payload):
                self.stats.sent_mqtt += 1
                return "mqtt"
            self.stats.mqtt_failures += 1
        leader = self._leader_url()
        if leader is None or self._poster is None:
            self.stats.local_only += 1
            return "local"
        if await self._poster.post(leader, payload):
            self.stats.sent_http += 1
            return "http"
        self.stats.http_failures += 1
        return "unsent"

    def _build(self) -> bytes | None:
        now = self._clock.monotonic()
        elapsed = self._interval_s if self._last_take is None else now - self._last_take
        self._last_take = now
        counts = self._take()
        tenants = top_tenants(counts, self._max_tenants)
        self.stats.tenants_left_out += len(counts) - len(tenants)
        self._seq += 1
        self.stats.reports += 1
        report = TrafficReport(
            cluster=self._cluster,
            server=self._server,
            boot=self.boot,
            seq=self._seq,
            at=self._clock.wall(),
            interval_s=min(MAX_INTERVAL_S, max(1e-3, elapsed)),
            tenants=tenants,
        )
        self._aggregator.add(report)
        return self._sign(report)

    def _sign(self, report: TrafficReport) -> bytes | None:
        """The signed report; halves its tenants (keeping the busiest) until it fits."""
        while True:
            try:
                return encode_report(report, self._key)
            except ReportError as exc:
                if exc.reason != "too_big" or len(report.tenants) <= 1:
                    _log.warning("traffic_report_unsigned", reason=str(exc))
                    return None
            kept = top_tenants(report.tenants, len(report.tenants) // 2)
            self.stats.tenants_left_out += len(report.tenants) - len(kept)
            report = replace(report, tenants=kept)
