"""The operator's view of tenant stops: list them, lift one early, pin one for a while."""

from __future__ import annotations

import math
import uuid
from typing import Any, Final

from aiohttp import web

from consensus.commands import LiftStop, StopTenant
from consensus.state import ClusterState

# A pin longer than this is a typo, not a decision.
MAX_PIN_S: Final = 30 * 24 * 3600.0


def stops_document(state: ClusterState, wall: float) -> dict[str, Any]:
    """`GET /v1/stops`: every stop still in force, with how long it has left."""
    return {
        "stops": [
            {
                "subdomain": s.subdomain,
                "since": s.since,
                "until": s.until,
                "remaining_s": round(max(0.0, s.until - wall), 1),
                "reason": s.reason,
                "offence": s.offence,
                "pinned": s.pinned,
                "evidence": s.evidence,
            }
            for s in sorted(state.stops, key=lambda s: s.subdomain)
            if s.active(wall)
        ]
    }


def lift_command(subdomain: str, reason: str, wall: float) -> LiftStop:
    return LiftStop(
        id=f"lift:{subdomain}:{uuid.uuid4().hex}",
        at=wall,
        subdomain=subdomain,
        reason=reason,
        operator=True,
    )


def pin_command(subdomain: str, for_s: float, reason: str, wall: float) -> StopTenant:
    return StopTenant(
        id=f"pin:{subdomain}:{uuid.uuid4().hex}",
        at=wall,
        subdomain=subdomain,
        until=wall + for_s,
        reason=reason,
        operator=True,
    )


def pin_duration(body: object) -> float | str:
    """The pin's duration in seconds from a JSON body {"for_s": ...}, or what is wrong."""
    value = body.get("for_s") if isinstance(body, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "for_s (seconds) is required"
    try:
        value = float(value)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or not 0 < value <= MAX_PIN_S:
        return f"for_s must be more than 0 and at most {MAX_PIN_S:.0f}"
    return float(value)


def parse_duration(text: str) -> float:
    """`90`, `90s`, `15m`, `1h`, `2d` -> seconds; ValueError otherwise."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = text.strip().lower()
    unit = units.get(text[-1:])
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"not a positive duration: {text!r} (use e.g. 90s, 15m, 1h, 2d)")
    return seconds


def not_a_tenant(state: ClusterState, subdomain: str) -> web.Response | None:
    if state.tenant_slot(subdomain) is None:
        body = {"error": f"no tenant {subdomain[:64]!r}", "status": 404}
        return web.json_response(body, status=404)
    return None
