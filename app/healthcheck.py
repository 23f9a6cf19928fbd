"""`python -m app.healthcheck URL [--slot S --epoch N]`: exit 0 when the instance at URL
answers /healthz as the given slot and epoch, 1 otherwise (with the reason on stderr).

The container image's health check runs it inside the instance's own container, so an operator
sees `healthy` in `docker ps`. It uses only the standard library and never waits more than its
timeout."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

TIMEOUT_S = 2.0


def check(
    url: str, slot: str | None, epoch: int | None, timeout_s: float = TIMEOUT_S
) -> str | None:
    """None when healthy, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = json.loads(resp.read(65536))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{url}: {exc}"
    if not isinstance(body, dict) or body.get("status") != "ok":
        return f"{url}: not an ok health answer"
    if slot is not None and body.get("slot") != slot:
        return f"{url}: serves slot {body.get('slot')!r}, not {slot!r}"
    if epoch is not None and body.get("epoch") != epoch:
        return f"{url}: runs epoch {body.get('epoch')!r}, not {epoch}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.healthcheck")
    parser.add_argument("url", help="e.g. http://127.0.0.1:7410/healthz")
    parser.add_argument("--slot")
    parser.add_argument("--epoch", type=int)
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S)
    ns = parser.parse_args(argv)
    if not ns.url.startswith(("http://", "https://")):
        parser.error("the URL must start with http:// or https://")
    problem = check(ns.url, ns.slot, ns.epoch, ns.timeout)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
