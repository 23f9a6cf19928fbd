"""A real dockerd for tests: its own data root, exec root and socket under a temporary
directory, no iptables and no bridge (containers use the host's network), stopped by its PID
afterwards. Where dockerd cannot run here, `start_dockerd` says why and the tests skip."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.docker_client import open_docker
from agent.docker_image import Layout, build_image

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


@dataclass
class Dockerd:
    url: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def dockerd_missing() -> str | None:
    """Why no dockerd can be started here (None: try)."""
    if shutil.which("dockerd") is None:
        return "dockerd is not installed (Debian package docker.io)"
    if os.geteuid() != 0:
        return "dockerd needs root"
    return None


@contextlib.contextmanager
def start_dockerd() -> Iterator[Dockerd | str]:
    """Yield a running dockerd, or the reason it could not start (for pytest.skip)."""
    missing = dockerd_missing()
    if missing is not None:
        yield missing
        return
    # Short paths: a unix socket path must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="mw-dockerd-", dir="/tmp"))
    socket = root / "docker.sock"
    log = root / "dockerd.log"
    argv = [
        "dockerd",
        f"--data-root={root / 'data'}",
        f"--exec-root={root / 'exec'}",
        f"--pidfile={root / 'dockerd.pid'}",
        f"--host=unix://{socket}",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--storage-driver=overlay2",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    daemon = Dockerd(f"unix://{socket}", root, process, log)
    try:
        reason = _wait_ready(daemon)
        yield daemon if reason is None else reason
    finally:
        _stop(daemon)


def _wait_ready(daemon: Dockerd) -> str | None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            return f"dockerd exited with {daemon.process.returncode}:\n{daemon.log_tail()}"
        with contextlib.suppress(Exception):
            client = open_docker(daemon.url, 5)
            try:
                if client.ping():
                    return None
            finally:
                client.close()
        time.sleep(0.2)
    return f"dockerd did not answer within {START_TIMEOUT_S:.0f} s:\n{daemon.log_tail()}"


def _stop(daemon: Dockerd) -> None:
    """Stop the containers and the daemon we started, then remove what it left on disk."""
    if daemon.process.poll() is None:
        with contextlib.suppress(Exception):
            client = open_docker(daemon.url, 10)
            try:
                for container in client.containers.list(all=True):
                    container.remove(force=True)
            finally:
                client.close()
        daemon.process.send_signal(signal.SIGTERM)
        try:
            daemon.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            daemon.process.wait()
    _unmount_under(daemon.root)
    shutil.rmtree(daemon.root, ignore_errors=True)


def _unmount_under(root: Path) -> None:
    """Unmount anything dockerd left mounted below `root` (deepest first)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    inside = [m.split()[1] for m in mounts if m.split()[1].startswith(str(root) + "/")]
    for target in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, timeout=10, check=False)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    with start_dockerd() as daemon:
        if isinstance(daemon, str):
            pytest.skip(f"no dockerd here: {daemon}")
        yield daemon


@pytest.fixture(scope="session")
def image(dockerd: Dockerd) -> str:
    """The app image, built from this repository by the same code as `moonwatch image build`."""
    client = open_docker(dockerd.url, 300)
    try:
        return build_image(client, Layout.of_this_interpreter(REPO / "app"))
    finally:
        client.close()


@pytest.fixture
def docker_client(dockerd: Dockerd) -> Iterator[Any]:
    client = open_docker(dockerd.url, 30)
    yield client
    client.close()
