"""pytest glue for the network lab: a started lab cluster, or a skip saying why not."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.netlab import LabUnavailable, require_lab
from tests.chaos.netlab_cluster import LabCluster

# Lab directories (config, data, every process's log) live here, not in pytest's tmp_path,
# which other test runs rotate away: a failed scenario's logs stay for a day.
LAB_DIR_ENV = "NETLAB_DIR"
DEFAULT_LAB_DIR = Path("/tmp/moonwatch-netlab")
KEEP_FAILED_S = 86400.0


def lab_dir() -> Path:
    base = Path(os.environ.get(LAB_DIR_ENV, DEFAULT_LAB_DIR))
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob("mw-lab-*"):
        if time.time() - old.stat().st_mtime > KEEP_FAILED_S:
            shutil.rmtree(old, ignore_errors=True)
    return base


@contextlib.asynccontextmanager
async def lab_cluster(tmp_path: Path, **shape: Any) -> AsyncIterator[LabCluster]:
    """`LabCluster.build(...)`, skipping the test when the lab cannot run here. The lab's
    directory is removed when the block succeeds and kept (its path printed) when it fails."""
    del tmp_path  # the lab directory must outlive pytest's rotation of tmp_path
    try:
        require_lab()
    except LabUnavailable as exc:
        pytest.skip(str(exc))
    async with LabCluster.build(lab_dir(), **shape) as lab:
        try:
            yield lab
        except BaseException:
            print(f"\nlab directory kept: {lab.workdir} (logs in {lab.log_dir})")
            raise
    shutil.rmtree(lab.workdir, ignore_errors=True)


async def agreed_leader(lab: LabCluster, among: list[str] | None = None) -> str | None:
    """The leader every agent of `among` names, once they agree (for wait_until)."""
    leader = await lab.leader(among)
    return leader if leader is not None and leader in (among or lab.names) else None
