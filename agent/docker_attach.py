"""The Docker Engine API's attach, held open by the docker driver: the container's stdin one
way (the lease control channel), its multiplexed stdout and stderr the other."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, BinaryIO, Final
from urllib.parse import urlsplit

ATTACH_TIMEOUT_S: Final = 10.0
_LINE_LIMIT: Final = 65536


class LineCopier:
    """Whole lines to `out`, so the app's log lines never interleave with the agent's."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._partial = b""

    def feed(self, data: bytes) -> None:
        data = self._partial + data
        complete, _, self._partial = data.rpartition(b"\n")
        if len(self._partial) > _LINE_LIMIT:
            complete, self._partial = data, b""
        if complete:
            with contextlib.suppress(OSError, ValueError):
                self._out.write(complete + b"\n")
                self._out.flush()


async def attach(url: str, container_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hijacked attach connection to the container: its stdin one way, its multiplexed
    stdout and stderr the other (the Docker Engine API's attach with Upgrade: tcp)."""
    parts = urlsplit(url)
    connect: Any
    if parts.scheme == "unix":
        connect = asyncio.open_unix_connection(parts.path)
    elif parts.scheme in ("tcp", "http") and parts.hostname is not None:
        connect = asyncio.open_connection(parts.hostname, parts.port or 2375)
    else:
        raise ValueError(f"unsupported docker URL {url!r} (use unix:// or tcp://)")
    reader, writer = await asyncio.wait_for(connect, ATTACH_TIMEOUT_S)
    request = (
        f"POST /containers/{container_id}/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\n"
        "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    )
    writer.write(request.encode())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ATTACH_TIMEOUT_S)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
        writer.close()
        raise ConnectionError(f"docker attach: no answer ({exc!r})") from exc
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    if status.split(" ")[1:2] not in (["101"], ["200"]):
        writer.close()
        raise ConnectionError(f"docker attach refused: {status}")
    return reader, writer
