"""`moonwatch status`: fetch /v1/status from an agent and render it as a table."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class StatusUnavailable(Exception):
    """No agent answered."""


def fetch_status(urls: list[str], timeout_s: float = 2.0) -> tuple[str, dict[str, Any]]:
    """The first agent among `urls` that answers; raises StatusUnavailable naming each failure."""
    failures: list[str] = []
    for url in urls:
        target = url.rstrip("/") + "/v1/status"
        if not target.startswith(("http://", "https://")):
            failures.append(f"{url}: only http:// and https:// URLs are supported")
            continue
        try:
            with urllib.request.urlopen(target, timeout=timeout_s) as resp:
                body = json.loads(resp.read().decode())
            if isinstance(body, dict):
                return url, body
            failures.append(f"{target}: not a JSON object")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            failures.append(f"{target}: {getattr(exc, 'reason', exc)}")
    raise StatusUnavailable("no agent answered:\n  " + "\n  ".join(failures))


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns as wide as their widest cell, one line per row."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def render_status(source: str, doc: dict[str, Any]) -> str:
    """A readable table of servers, slots and the leader."""
    leader = doc.get("leader")
    lines = [
        f"cluster {doc.get('cluster')}   leader {leader or '(none)'}   term {doc.get('term')}   "
        f"mode {doc.get('mode')}",
        f"as seen by {doc.get('server')} (pid {doc.get('pid')}) at {source}",
        "",
    ]
    servers = [
        [
            ("* " if s.get("name") == leader else "  ") + str(s.get("name")),
            str(s.get("role")),
            str(s.get("state")),
            str(s.get("incarnation")),
            str(s.get("domain", "")),
            "voter" if s.get("voter") else "-",
        ]
        for s in doc.get("servers", [])
    ]
    lines += table(["  SERVER", "ROLE", "STATE", "INCARNATION", "DOMAIN", "RAFT"], servers)
    lines.append("")
    slots = [
        [
            str(s.get("name")),
            str(s.get("owner") or "-"),
            str(s.get("state")),
            str(s.get("epoch")),
            ", ".join(s.get("tenants", [])),
        ]
        for s in doc.get("slots", [])
    ]
    lines += table(["SLOT", "OWNER", "STATE", "EPOCH", "TENANTS"], slots)
    change = doc.get("voter_change")
    if isinstance(change, dict):
        lines += [
            "",
            f"replacing Raft voter {change.get('remove')} by {change.get('add')} "
            f"(step {change.get('step')})",
        ]
    stops = doc.get("stops") or []
    if stops:
        lines += ["", f"stopped subdomains: {len(stops)}"]
    lines += ["", "* = Raft leader"]
    return "\n".join(lines)


def operator_call(
    urls: list[str],
    path: str,
    token: str,
    reason: str,
    timeout_s: float = 10.0,
    extra: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST an authenticated operator call to the first agent that answers at all."""
    payload = json.dumps({"reason": reason, **(extra or {})}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return _first_answer(urls, path, timeout_s, data=payload, headers=headers)


def render_stops(doc: dict[str, Any]) -> str:
    """`moonwatch stops`: the tenants refused at every edge, and why."""
    stops = doc.get("stops") or []
    if not stops:
        return "no tenant is stopped"
    rows = [
        [
            str(s.get("subdomain")),
            f"{float(s.get('remaining_s', 0)):.0f} s",
            "pinned" if s.get("pinned") else f"#{s.get('offence')}",
            str(s.get("reason")),
        ]
        for s in stops
    ]
    return "\n".join(table(["SUBDOMAIN", "LEFT", "STOP", "REASON"], rows))


def fetch_json(urls: list[str], path: str, timeout_s: float = 2.0) -> tuple[int, dict[str, Any]]:
    """GET `path` from the first agent that answers at all (any HTTP status)."""
    return _first_answer(urls, path, timeout_s)


def _first_answer(
    urls: list[str],
    path: str,
    timeout_s: float,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    failures: list[str] = []
    for url in urls:
        target = url.rstrip("/") + path
        if not target.startswith(("http://", "https://")):
            failures.append(f"{url}: only http:// and https:// URLs are supported")
            continue
        method = "POST" if data is not None else "GET"
        request = urllib.request.Request(target, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                return resp.status, _object(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _object(exc.read())
        except (urllib.error.URLError, OSError) as exc:
            failures.append(f"{target}: {getattr(exc, 'reason', exc)}")
    raise StatusUnavailable("no agent answered:\n  " + "\n  ".join(failures))


def _object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode())
    except ValueError:
        return {"error": raw[:200].decode(errors="replace")}
    return body if isinstance(body, dict) else {"error": str(body)[:200]}


def render_explanation(doc: dict[str, Any]) -> str:
    """`moonwatch explain`: the decision in words, then its incident, oldest first."""
    lines = [f"{doc.get('id')}  {doc.get('kind')}  {doc.get('subject')}", ""]
    lines.append(str(doc.get("explanation", "")))
    timeline = doc.get("timeline") or []
    if len(timeline) > 1:
        lines += ["", "incident timeline:"]
        for step in timeline:
            marker = "*" if step.get("id") == doc.get("id") else " "
            lines.append(
                f" {marker} +{float(step.get('after_s', 0)):7.3f} s  {step.get('id')}  "
                f"{step.get('what')}"
            )
    return "\n".join(lines)
