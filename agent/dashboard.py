"""What the status page shows, built from the /v1/status document and the decisions."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any, Final

from agent.explain import explain, explained
from consensus.state import ClusterState, Decision

# How many of the latest decisions the page lists.
RECENT_DECISIONS: Final = 20

# Tones the page colours by: "bad" is red, "warn" amber, "ok" green, "muted" grey. The script
# reads the same tables from the page, so both renderings agree.
TONES: Final[dict[str, dict[str, str]]] = {
    "server": {
        "up": "ok",
        "new": "muted",
        "suspected": "warn",
        "draining": "warn",
        "quarantined": "warn",
        "failed": "bad",
    },
    "slot": {
        "serving": "ok",
        "assigned": "warn",
        "released": "warn",
        "unassigned": "warn",
        "lost": "bad",
    },
    "decision": {
        "server_failed": "bad",
        "voter_replacement_abandoned": "bad",
        "server_suspected": "warn",
        "server_back_quarantined": "warn",
        "server_draining": "warn",
        "tenant_stopped": "warn",
        "action_held": "warn",
        "mode_changed": "warn",
        "slot_serving": "ok",
        "server_refuted": "ok",
        "server_returned": "ok",
        "voter_removed": "ok",
    },
}


def at_text(at: float | None) -> str:
    """A wall-clock time as `2024-05-01 12:00:00Z`; "-" for none."""
    if at is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def remaining_text(seconds: float) -> str:
    """A duration left as `42 s`, `15 min 5 s` or `2 h 5 min`."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def mode_reason(decisions: Sequence[Decision], mode: str) -> tuple[str, float | None]:
    """Why the cluster is in `mode`: the reason and time of the change that put it there."""
    for d in reversed(decisions):
        if d.kind == "mode_changed" and d.evidence.get("to") == mode:
            return str(d.evidence.get("reason", "")), d.at
    return "", None


def _servers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    suspected = {
        str(s.get("target")): [str(o) for o in s.get("unreachable_by", [])]
        for s in doc.get("suspicions", [])
    }
    rows = []
    for s in doc.get("servers", []):
        name = str(s.get("name"))
        state = str(s.get("state"))
        note = ""
        if state == "up" and name in suspected:
            state = "suspected"
            note = "unreachable by " + (", ".join(suspected[name]) or "?")
        rows.append(
            {
                "name": name,
                "leader": name == doc.get("leader"),
                "self": name == doc.get("server"),
                "role": str(s.get("role")),
                "state": state,
                "tone": TONES["server"].get(state, "muted"),
                "voter": bool(s.get("voter")),
                "domain": str(s.get("domain", "")),
                "incarnation": s.get("incarnation"),
                "note": note,
            }
        )
    return rows


def _slots(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": str(s.get("name")),
            "owner": str(s.get("owner") or "-"),
            "epoch": s.get("epoch"),
            "state": str(s.get("state")),
            "tone": TONES["slot"].get(str(s.get("state")), "muted"),
            "tenants": ", ".join(str(t) for t in s.get("tenants", [])),
            "address": str(s.get("address") or "-"),
        }
        for s in doc.get("slots", [])
    ]


def _stops(doc: dict[str, Any], now: float) -> list[dict[str, Any]]:
    active = [s for s in doc.get("stops", []) if float(s.get("until", 0)) > now]
    return [
        {
            "subdomain": str(s.get("subdomain")),
            "remaining": remaining_text(float(s.get("until", 0)) - now),
            "until": at_text(float(s.get("until", 0))),
            "kind": "pinned by an operator" if s.get("pinned") else "automatic",
            "reason": str(s.get("reason", "")),
        }
        for s in sorted(active, key=lambda s: str(s.get("subdomain")))
    ]


def _backups(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "slot": str(b.get("slot")),
            "last_ok": at_text(b.get("last_ok_at")),
            "last_attempt": at_text(b.get("last_attempt_at")),
            "error": str(b.get("last_error") or ""),
            "tone": "bad" if b.get("last_error") else ("ok" if b.get("last_ok_at") else "muted"),
        }
        for b in doc.get("backups") or []
    ]


def _mode_banner(mode: str, why: str, since: float | None) -> dict[str, str] | None:
    if mode == "normal":
        return None
    text = f"{mode.capitalize()} mode since {at_text(since)}: {why or 'no reason recorded'}."
    if mode != "cascade":
        return {"tone": "warn", "text": text}
    held = " Automatic replacement is held back; `moonwatch resume` ends it."
    return {"tone": "bad", "text": text + held}


def banners(doc: dict[str, Any], why: str, since: float | None) -> list[dict[str, str]]:
    """The problems that must stand out, worst first."""
    out: list[dict[str, str]] = []
    if doc.get("leader") is None:
        text = f"No quorum: {doc.get('server')} knows no Raft leader; nothing heals until one is."
        out.append({"tone": "bad", "text": text})
    mode = _mode_banner(str(doc.get("mode")), why, since)
    if mode is not None:
        out.append(mode)
    servers = _servers(doc)
    for state, tone in (("failed", "bad"), ("suspected", "warn"), ("quarantined", "warn")):
        names = [s["name"] for s in servers if s["state"] == state]
        if names:
            out.append({"tone": tone, "text": f"{state.capitalize()}: {', '.join(names)}"})
    change = doc.get("voter_change")
    if isinstance(change, dict):
        text = (
            f"Voter change in progress: {change.get('add')} replaces {change.get('remove')} "
            f"(step {change.get('step')}, since {at_text(change.get('since'))})."
        )
        out.append({"tone": "warn", "text": text})
    return out


def decision_rows(decisions: Sequence[Decision]) -> list[dict[str, Any]]:
    """The latest decisions, newest first, each in one line of words."""
    return [
        {
            "id": d.id,
            "at": at_text(d.at),
            "kind": d.kind,
            "subject": d.subject,
            "words": explain(d),
            "tone": TONES["decision"].get(d.kind, "muted"),
        }
        for d in reversed(decisions[-RECENT_DECISIONS:])
    ]


def dashboard(doc: dict[str, Any], decisions: Sequence[Decision], now: float) -> dict[str, Any]:
    """Everything `GET /` renders; `doc` is the /v1/status document, `now` the agent's wall."""
    mode = str(doc.get("mode"))
    why, since = mode_reason(decisions, mode)
    return {
        "cluster": str(doc.get("cluster")),
        "server": str(doc.get("server")),
        "pid": doc.get("pid"),
        "leader": doc.get("leader"),
        "term": doc.get("term"),
        "quorum": doc.get("leader") is not None,
        "mode": mode,
        "mode_why": why,
        "banners": banners(doc, why, since),
        "servers": _servers(doc),
        "slots": _slots(doc),
        "stops": _stops(doc, now),
        "backups": _backups(doc),
        "decisions": decision_rows(decisions),
        "now": now,
        "updated": at_text(now),
    }


def decision_view(state: ClusterState, decision: Decision) -> dict[str, Any]:
    """Everything `GET /decisions/{id}` renders: the decision, its evidence and its incident."""
    told = explained(state, decision)
    return {
        "id": decision.id,
        "kind": decision.kind,
        "subject": decision.subject,
        "at": at_text(decision.at),
        "tone": TONES["decision"].get(decision.kind, "muted"),
        "explanation": told["explanation"],
        "evidence": [
            (key, value if isinstance(value, str) else json.dumps(value))
            for key, value in sorted(decision.evidence.items())
        ],
        "timeline": [
            {**step, "at": at_text(step["at"]), "current": step["id"] == decision.id}
            for step in told["timeline"]
        ],
    }
