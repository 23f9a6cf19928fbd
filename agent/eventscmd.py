"""`moonwatch events`: the cluster's events as they happen (--follow), or the servers' retained
states, read from the configured MQTT broker with the configured credentials."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, TextIO

import aiomqtt

from agent.clock import SystemClock
from agent.config import ClusterConfig, MqttConfig
from agent.daemon import EXIT_USAGE, install_signal_handlers
from agent.event_publisher import describe_error
from agent.events import decode, event_line, events_topic, server_line, server_topic
from agent.mqtt import pause

# Retained states keep arriving right after the subscription; this long without one: done.
QUIET_S: Final = 0.5
STATES_TIMEOUT_S: Final = 5.0
RETRY_MAX_S: Final = 5.0
REMEMBERED_IDS: Final = 1000


def events_command(
    config: ClusterConfig, *, follow: bool, kind: str | None, as_json: bool, out: TextIO
) -> int:
    """Print events until interrupted (follow), or the servers' states once; the exit code."""
    mqtt = config.mqtt
    if mqtt is None:
        print("moonwatch events: the config has no mqtt block", file=sys.stderr)
        return EXIT_USAGE
    if kind is not None and (not kind or any(c in kind for c in "+#/")):
        print(f"moonwatch events: --kind {kind!r} is not an event kind", file=sys.stderr)
        return EXIT_USAGE
    if follow:
        return asyncio.run(_follow(mqtt, config.cluster, kind, as_json, out))
    return asyncio.run(_states(mqtt, config.cluster, as_json, out))


def _client(mqtt: MqttConfig) -> aiomqtt.Client:
    login = mqtt.login
    return aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        username=login[0] if login else None,
        password=login[1] if login else None,
        identifier=f"moonwatch-cli-{secrets.token_hex(6)}",
        timeout=3.0,
        keepalive=10,
    )


def _refused(exc: aiomqtt.MqttError, mqtt: MqttConfig) -> str | None:
    """The operator's words when the broker refused the login (retrying will not help)."""
    text = describe_error(exc, mqtt.username)
    return text if text.startswith("the broker refused") else None


async def _follow(
    mqtt: MqttConfig, cluster: str, kind: str | None, as_json: bool, out: TextIO
) -> int:
    stopping = asyncio.Event()
    install_signal_handlers(stopping)
    clock = SystemClock()
    seen: deque[str] = deque(maxlen=REMEMBERED_IDS)  # the same event may come twice
    topic = events_topic(mqtt.topic_prefix, cluster, kind or "+")
    backoff, said = 0.5, ""
    while not stopping.is_set():
        try:
            async with _client(mqtt) as client:
                await client.subscribe(topic, qos=1)
                backoff, said = 0.5, ""
                async for payload in _until(client, stopping):
                    _print_event(payload, seen, as_json, out)
        except aiomqtt.MqttError as exc:
            refused = _refused(exc, mqtt)
            if refused is not None:
                print(f"moonwatch events: {refused}", file=sys.stderr)
                return 1
            if str(exc) != said:
                said = str(exc)
                print(f"moonwatch events: broker unavailable ({exc}); retrying", file=sys.stderr)
        await pause(clock, stopping, backoff)
        backoff = min(RETRY_MAX_S, backoff * 2)
    return 0


async def _until(client: aiomqtt.Client, stopping: asyncio.Event) -> AsyncIterator[bytes]:
    """The payloads of `client`'s messages until `stopping` is set."""
    messages = aiter(client.messages)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        while not stopping.is_set():
            arrival = asyncio.ensure_future(anext(messages))
            await asyncio.wait({arrival, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not arrival.done():
                arrival.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await arrival
                return
            payload = arrival.result().payload
            if isinstance(payload, bytes | bytearray):
                yield bytes(payload)
    finally:
        stop.cancel()


def _print_event(payload: bytes, seen: deque[str], as_json: bool, out: TextIO) -> None:
    event = decode(payload)
    if event is None:
        return
    event_id = event.get("id")
    if isinstance(event_id, str):
        if event_id in seen:
            return
        seen.append(event_id)
    line = json.dumps(event, separators=(",", ":")) if as_json else event_line(event)
    print(line, file=out, flush=True)


async def _states(mqtt: MqttConfig, cluster: str, as_json: bool, out: TextIO) -> int:
    states: dict[str, dict[str, object]] = {}
    try:
        async with _client(mqtt) as client:
            await client.subscribe(server_topic(mqtt.topic_prefix, cluster), qos=1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATES_TIMEOUT_S):
                    messages = aiter(client.messages)
                    while True:
                        message = await asyncio.wait_for(anext(messages), QUIET_S)
                        document = (
                            decode(bytes(message.payload))
                            if isinstance(message.payload, bytes | bytearray)
                            else None
                        )
                        if document is not None:
                            states[str(message.topic).rsplit("/", 1)[-1]] = document
    except aiomqtt.MqttError as exc:
        print(f"moonwatch events: {describe_error(exc, mqtt.username)}", file=sys.stderr)
        return 1
    if not states:
        print("no server has published its state yet", file=out)
    for name in sorted(states):
        document = states[name]
        print(json.dumps(document) if as_json else server_line(document), file=out)
    return 0
