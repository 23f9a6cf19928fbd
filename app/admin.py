"""Operator commands that act on one slot's data: `python -m app.admin tenant-create ...`.

The agent's CLI runs this module as a process (`moonwatch tenant create`), so that the agent
never imports the app's internals. It opens the slot's database the way the app does (the
SQLite file under the slot's data directory, or `--database-url`), migrates it if needed,
and prints one JSON line: the tenant and its one-time setup token, or the error.

Exit codes: 0 done, 1 refused (the name is taken, a bad e-mail address, ...), 3 the database
cannot be opened or migrated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Final

from app.accounts import AccountError, create_tenant
from app.clock import SystemClock
from app.db import Unavailable, open_database, sqlite_path
from app.migrate import MigrationError, migrate

EXIT_REFUSED: Final = 1
EXIT_DATABASE: Final = 3
# Where the agent puts a slot's PostgreSQL URL (the same variable the app itself reads).
DATABASE_URL_ENV: Final = "MOONWATCH_DATABASE_URL"


async def tenant_create(args: argparse.Namespace) -> int:
    target = args.database_url or sqlite_path(Path(args.data_dir))
    try:
        db = await open_database(target)
    except (Unavailable, OSError) as exc:
        print(json.dumps({"error": f"cannot open the slot's database: {exc}"}))
        return EXIT_DATABASE
    try:
        await migrate(db)
        tenant, token = await create_tenant(
            db, args.name, args.display_name or args.name, args.admin_email, SystemClock()
        )
    except (Unavailable, MigrationError) as exc:
        print(json.dumps({"error": f"the slot's database is not usable: {exc}"}))
        return EXIT_DATABASE
    except AccountError as exc:
        print(json.dumps({"error": str(exc)}))
        return EXIT_REFUSED
    finally:
        await db.close()
    print(json.dumps({"tenant": tenant.name, "id": tenant.id, "setup_token": token}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.admin")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("tenant-create", help="create a tenant and its owner")
    create.add_argument("--data-dir", required=True, help="the slot's data directory")
    create.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_URL_ENV) or None,
        help=f"postgresql://... instead of the SQLite file (default: ${DATABASE_URL_ENV})",
    )
    create.add_argument("--name", required=True, help="the tenant's subdomain label")
    create.add_argument("--admin-email", required=True)
    create.add_argument("--display-name")
    args = parser.parse_args(argv)
    try:
        Path(args.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        print(json.dumps({"error": f"cannot create the slot's data directory: {exc}"}))
        return EXIT_DATABASE
    return asyncio.run(tenant_create(args))


if __name__ == "__main__":
    sys.exit(main())
