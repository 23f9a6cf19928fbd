"""Transports: the in-memory network's loss, partitions and delay, and UDP on loopback."""

from __future__ import annotations

import asyncio
import random

import pytest

from agent.swim.memory_transport import MemoryNetwork, MemoryTransport
from agent.swim.transport import PeerTransport, UdpTransport


def inboxes(network: MemoryNetwork, *names: str) -> dict[str, list[bytes]]:
    boxes: dict[str, list[bytes]] = {}
    for name in names:
        boxes[name] = []
        network.transport(name).on_receive(boxes[name].append)
    return boxes


def test_memory_transport_is_a_peer_transport() -> None:
    transport: PeerTransport = MemoryNetwork(random.Random(1)).transport("a")
    assert isinstance(transport, MemoryTransport)


def test_delivery_waits_for_deliver_due_and_the_delay() -> None:
    network = MemoryNetwork(random.Random(1), delay_s=(0.05, 0.05))
    box = inboxes(network, "a", "b")
    network.transport("a").send("b", b"hi")
    assert network.deliver_due(0.0) == 0 and box["b"] == []
    assert network.deliver_due(0.049) == 0
    assert network.deliver_due(0.05) == 1 and box["b"] == [b"hi"]
    assert network.in_flight == 0


def test_messages_sent_while_delivering_wait_for_the_next_call() -> None:
    network = MemoryNetwork(random.Random(1))
    box = inboxes(network, "a")
    b = network.transport("b")
    b.on_receive(lambda data: b.send("a", data + b"!"))
    network.transport("a").send("b", b"ping")
    assert network.deliver_due(0.0) == 1 and box["a"] == []
    assert network.deliver_due(0.0) == 1 and box["a"] == [b"ping!"]


def test_loss_is_per_link_and_seeded() -> None:
    def delivered(seed: int) -> list[bytes]:
        network = MemoryNetwork(random.Random(seed))
        box = inboxes(network, "a", "b")
        network.set_loss("a", "b", 0.5)
        for i in range(200):
            network.transport("a").send("b", bytes([i]))
            network.transport("b").send("a", bytes([i]))
        network.deliver_due(1.0)
        assert len(box["a"]) == 200  # the reverse link is clean
        return box["b"]

    assert delivered(3) == delivered(3)
    assert 60 < len(delivered(3)) < 140


def test_blocking_isolating_and_crashing() -> None:
    network = MemoryNetwork(random.Random(1))
    box = inboxes(network, "a", "b", "c")
    a, b, c = (network.transport(n) for n in "abc")
    network.block("a", "b")
    a.send("b", b"1")
    b.send("a", b"2")
    network.deliver_due(0.0)
    assert box["b"] == [] and box["a"] == [b"2"]
    a.send("c", b"in flight")
    network.isolate("a")  # cuts the datagram already on its way too
    network.deliver_due(0.1)
    assert box["c"] == []
    network.heal()
    network.set_up("c", False)
    a.send("c", b"3")
    c.send("a", b"4")
    network.deliver_due(0.2)
    assert box["c"] == [] and box["a"] == [b"2"]
    assert network.stats["dropped_blocked"] == 2 and network.stats["dropped_down"] == 2


def test_unknown_peer_and_missing_receiver_are_counted_not_raised() -> None:
    network = MemoryNetwork(random.Random(1))
    a, b = network.transport("a"), network.transport("b")
    a.send("nobody", b"x")
    a.send("b", b"y")
    network.deliver_due(0.0)
    assert a.errors["unknown_peer"] == 1 and b.errors["no_receiver"] == 1


def test_memory_network_validates() -> None:
    with pytest.raises(ValueError):
        MemoryNetwork(random.Random(1), loss=1.5)
    with pytest.raises(ValueError):
        MemoryNetwork(random.Random(1), delay_s=(0.2, 0.1))


async def test_memory_transport_start_and_close_bring_it_up_and_down() -> None:
    network = MemoryNetwork(random.Random(1))
    box = inboxes(network, "a", "b")
    b = network.transport("b")
    await b.close()
    network.transport("a").send("b", b"lost")
    await b.start()
    network.transport("a").send("b", b"kept")
    network.deliver_due(0.0)
    assert box["b"] == [b"kept"]


async def test_udp_round_trip_on_loopback_and_errors_are_counted() -> None:
    addresses: dict[str, tuple[str, int]] = {}
    a = UdpTransport("127.0.0.1", 0, lambda: addresses)
    b = UdpTransport("127.0.0.1", 0, lambda: addresses)
    got: asyncio.Queue[bytes] = asyncio.Queue()
    b.on_receive(got.put_nowait)
    a.send("b", b"too early")
    assert a.errors["not_open"] == 1
    await a.start()
    await b.start()
    try:
        addresses.update(a=a.local_address, b=b.local_address)
        a.send("b", b"hello")
        assert await asyncio.wait_for(got.get(), 5.0) == b"hello"
        a.send("stranger", b"x")
        assert a.errors["unknown_peer"] == 1
    finally:
        await a.close()
        await b.close()
    await a.close()  # idempotent
    a.send("b", b"after close")
    assert a.errors["not_open"] == 2
    with pytest.raises(RuntimeError):
        _ = a.local_address
