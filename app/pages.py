"""HTML pages of the hosted app: one inline template, every substituted value HTML-escaped."""

from __future__ import annotations

import html
from string import Template

# Longest host name we echo back; a DNS name is at most 253 characters.
MAX_SHOWN_HOST = 253

_PAGE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
  :root { color-scheme: light dark; font-family: system-ui, -apple-system, sans-serif; }
  body { margin: 0; min-height: 100vh; display: grid; place-items: center;
         background: #f3f4f7; color: #1c2230; }
  main { max-width: 36rem; margin: 1rem; padding: 2rem 2.5rem; border-radius: 12px;
         background: #fff; box-shadow: 0 1px 4px rgb(0 0 0 / 12%); }
  h1 { margin: 0 0 .5rem; font-size: 1.6rem; overflow-wrap: anywhere; }
  p { margin: 0; color: #586174; line-height: 1.5; overflow-wrap: anywhere; }
  @media (prefers-color-scheme: dark) {
    body { background: #14171c; color: #e6e8ec; }
    main { background: #1e222a; }
    p { color: #9ba4b4; }
  }
</style>
</head>
<body>
<main>
<h1>$heading</h1>
<p>$detail</p>
</main>
</body>
</html>
""")


def render(*, title: str, heading: str, detail: str) -> str:
    """Fill the page template; every value is HTML-escaped here, so callers pass plain text."""
    return _PAGE.substitute(
        title=html.escape(title), heading=html.escape(heading), detail=html.escape(detail)
    )


def tenant_home(tenant: str, slot: str, server: str, epoch: int) -> str:
    """The workspace's landing page: which slot and server host it, and at which epoch."""
    hosted = f"hosted on slot {slot} by server {server} (epoch {epoch})"
    return render(title=f"{tenant} — {hosted}", heading=tenant, detail=f"{tenant} — {hosted}")


def unknown_workspace(host: str) -> str:
    """The 404 page for a host that names no workspace of this slot."""
    shown = shown_host(host)
    detail = (
        f"The workspace “{shown}” does not exist here."
        if shown
        else "The requested workspace does not exist here."
    )
    return render(title="Workspace not found", heading="Workspace not found", detail=detail)


def page_not_found(tenant: str) -> str:
    """The 404 page for an unknown path inside a workspace that does exist."""
    detail = f"There is no page at this address in the workspace “{tenant}”."
    return render(title=f"Not found — {tenant}", heading="Page not found", detail=detail)


def not_serving() -> str:
    """The 503 page of an instance that holds no lease on its slot right now."""
    detail = "This workspace is moving or restarting. Please try again in a moment."
    return render(title="Temporarily unavailable", heading="Temporarily unavailable", detail=detail)


def shown_host(host: str) -> str:
    """Make a client-supplied host safe to echo: printable ASCII only, at most 253 characters."""
    clipped = host[:MAX_SHOWN_HOST]
    safe = "".join(ch if ch.isascii() and ch.isprintable() else "?" for ch in clipped)
    return safe + "…" if len(host) > MAX_SHOWN_HOST else safe
