"""An app instance whose agent vanished stops serving by itself."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.support import free_port_block

LAUNCHER = """
import subprocess, sys
import os
argv = [*sys.argv[1:], "--parent-pid", str(os.getpid())]
child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
"""  # the launcher exits at once, as an agent killed alone (not its process group) would


def test_orphaned_app_stops(tmp_path: Path) -> None:
    port = free_port_block(1)
    argv = [
        sys.executable, "-m", "app", "--slot", "s1", "--server", "m1", "--epoch", "1",
        "--host", "127.0.0.1", "--port", str(port), "--tenant", "acme",
        "--data-dir", str(tmp_path / "slot"),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *argv], capture_output=True, text=True, timeout=10
    )
    app = psutil.Process(int(done.stdout.split()[0]))
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not app.is_running() or app.status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the orphaned app kept running")
    except psutil.NoSuchProcess:
        pass
    finally:
        if app.is_running() and app.status() != psutil.STATUS_ZOMBIE:
            app.kill()
