"""Typed, validated settings for one hosted-app process (built by ``app.__main__`` from argv)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Control = Literal["stdin", "none"]
CONTROLS: tuple[Control, ...] = ("stdin", "none")

# One DNS label, lower-case: what a tenant (workspace) may be called.
TENANT_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Slot and server names travel in response headers, so keep them to a header-safe token.
INSTANCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The largest file an upload may carry.
DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024


@dataclass(frozen=True)
class AppSettings:
    """Everything the app needs to know about the slot it serves; immutable once parsed."""

    slot: str
    server: str
    epoch: int
    host: str
    port: int
    base_domain: str
    tenants: tuple[str, ...]
    data_dir: Path
    # The agent that supervises this instance; when it is gone, the instance stops serving.
    parent_pid: int | None = None
    # "stdin": serve only under a lease the agent writes to stdin; "none": always serve.
    control: Control = "none"
    # Append-only file of start/renew/stop records (for scripts/check_overlap.py).
    overlap_log: Path | None = None
    # postgresql://... for the slot's data; None: the SQLite file under ``data_dir``.
    database_url: str | None = None
    # The largest uploaded file, in bytes (the upload route's body limit, not the JSON cap).
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    # CIDR ranges of the proxies (the cluster's edges) whose X-Forwarded-For is believed.
    trusted_proxies: tuple[str, ...] = ()
