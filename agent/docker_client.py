"""Opening a Docker SDK client without leaking a socket when dockerd is not there.

The SDK's unix-socket transport creates its socket and then connects it; when the connect
fails (dockerd not started yet, or gone), that socket is left open until the garbage
collector finds it. For a unix:// URL we therefore try the daemon's socket ourselves first,
with a socket we close, and only then let the SDK connect."""

from __future__ import annotations

import socket
from typing import Any

UNIX_SCHEMES = ("unix://", "http+unix://")


class DockerUnreachable(ConnectionError):
    """dockerd does not accept connections at the configured URL."""


def unix_socket_path(url: str) -> str | None:
    """The socket path of a unix:// docker URL, or None for any other URL."""
    for scheme in UNIX_SCHEMES:
        if url.startswith(scheme):
            path = url[len(scheme) :]
            return path if path.startswith("/") else "/" + path
    return None


def probe_unix_socket(path: str, timeout: float) -> None:
    """Connect to `path` and close again; DockerUnreachable (naming the path) if that fails."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except OSError as exc:
            raise DockerUnreachable(f"dockerd is not reachable at unix://{path}: {exc}") from exc


def open_docker(url: str, timeout: float) -> Any:
    """A docker.DockerClient for `url` (it asks dockerd for its API version as it opens).
    Raises DockerUnreachable when a unix socket does not accept connections, and the SDK's
    own DockerException for anything else."""
    import docker  # imported here: only servers that run containers need it loaded

    path = unix_socket_path(url)
    if path is not None:
        probe_unix_socket(path, min(timeout, 5.0))
    return docker.DockerClient(base_url=url, timeout=timeout)
