"""`moonwatch tenant create NAME --admin-email ...`: provision a tenant in its slot's data.

The tenant must already be listed in a slot of the configuration (the edges route only those).
The work is done by the app's own admin module, run as a process against the slot's data
directory, so the agent never imports the app's internals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from agent.config import ClusterConfig
from agent.driver import DATABASE_URL_ENV

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def tenant_create(
    config: ClusterConfig, name: str, admin_email: str, display_name: str | None
) -> int:
    slot = config.tenant_slots().get(name)
    if slot is None:
        print(
            f"moonwatch tenant create: {name!r} is in no slot; add it to a slot's tenants in "
            "the configuration first (the edges route only configured tenants)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    command = [
        sys.executable,
        "-m",
        "app.admin",
        "tenant-create",
        "--data-dir",
        str(config.data_dir / "slots" / slot),
        "--name",
        name,
        "--admin-email",
        admin_email,
    ]
    if display_name:
        command += ["--display-name", display_name]
    env = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV}
    database_url = config.slot(slot).database_url
    if database_url is not None:
        env[DATABASE_URL_ENV] = database_url.get_secret_value()
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60, env=env)
    answer = _last_json(done.stdout)
    if done.returncode != 0 or "setup_token" not in answer:
        why = answer.get("error") or done.stderr.strip() or f"exit code {done.returncode}"
        print(f"moonwatch tenant create: {why}", file=sys.stderr)
        return EXIT_FAILED
    site = f"http://{name}.{config.base_domain}:{config.servers[0].edge_port}"
    token = answer["setup_token"]
    print(f"created tenant {name} in slot {slot}")
    print(f"one-time setup link for {admin_email} (valid 72 h, shown only now):")
    print(f"  {site}/join?token={token}")
    print(
        f"or by API: POST {site}/api/v1/invitations/accept "
        f'{{"token": "{token}", "display_name", "password"}}'
    )
    return EXIT_OK


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}
