"""Provision a tenant in its slot's data: `moonwatch tenant create NAME --admin-email ...` and the
operator endpoint POST /v1/tenants.

The tenant must already be listed in a slot of the configuration (the edges route only those).
The work is done by the app's own admin module, run as a process against the slot's data
directory (and its database URL, handed over in the environment), so the agent never imports
the app's internals. The answer is a one-time setup link for the tenant's owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from agent.config import ClusterConfig
from agent.driver import DATABASE_URL_ENV

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# The app's admin module: 1 refused (name taken, bad address), 3 the database is unusable.
_ADMIN_REFUSED = 1
_ADMIN_DATABASE = 3
PROVISION_TIMEOUT_S = 60.0


class ProvisionError(Exception):
    """Why a tenant was not created; ``status`` is the HTTP status that says so."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Provisioned:
    tenant: str
    slot: str
    admin_email: str
    setup_token: str
    site: str

    @property
    def setup_link(self) -> str:
        return f"{self.site}/join?token={self.setup_token}"


async def provision(
    config: ClusterConfig, name: str, admin_email: str, display_name: str | None = None
) -> Provisioned:
    """Create tenant ``name`` and its owner in the slot's data; ProvisionError when refused."""
    slot = config.tenant_slots().get(name)
    if slot is None:
        raise ProvisionError(
            400,
            f"{name!r} is in no slot; add it to a slot's tenants in the configuration first "
            "(the edges route only configured tenants)",
        )
    command = [
        sys.executable, "-m", "app.admin", "tenant-create",
        "--data-dir", str(config.data_dir / "slots" / slot),
        "--name", name, "--admin-email", admin_email,
    ]  # fmt: skip
    if display_name:
        command += ["--display-name", display_name]
    code, stdout, stderr = await _run(command, _environment(config, slot))
    answer = _last_json(stdout)
    if code != 0 or "setup_token" not in answer:
        why = answer.get("error") or stderr.strip() or f"exit code {code}"
        status = {_ADMIN_REFUSED: 409 if "taken" in str(why) else 400, _ADMIN_DATABASE: 503}
        raise ProvisionError(status.get(code, 500), str(why))
    site = f"http://{name}.{config.base_domain}:{config.servers[0].edge_port}"
    return Provisioned(name, slot, admin_email, str(answer["setup_token"]), site)


def _environment(config: ClusterConfig, slot: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV}
    database_url = config.slot(slot).database_url
    if database_url is not None:
        env[DATABASE_URL_ENV] = database_url.get_secret_value()
    return env


async def _run(command: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PROVISION_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise ProvisionError(
            503, f"the slot's database did not answer within {PROVISION_TIMEOUT_S:g} s"
        ) from None
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def tenant_create(
    config: ClusterConfig, name: str, admin_email: str, display_name: str | None
) -> int:
    """The CLI command: print the setup link (and the API alternative); an exit code."""
    try:
        done = asyncio.run(provision(config, name, admin_email, display_name))
    except ProvisionError as exc:
        print(f"moonwatch tenant create: {exc}", file=sys.stderr)
        return EXIT_USAGE if "in no slot" in str(exc) else EXIT_FAILED
    print(f"created tenant {done.tenant} in slot {done.slot}")
    print(f"one-time setup link for {done.admin_email} (valid 72 h, shown only now):")
    print(f"  {done.setup_link}")
    print(
        f"or by API: POST {done.site}/api/v1/invitations/accept "
        f'{{"token": "{done.setup_token}", "display_name", "password"}}'
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
