"""The hook by which a settings change reaches what caches tenant settings in a running app."""

from __future__ import annotations

from typing import Protocol

from aiohttp import web


class ForgetsTenants(Protocol):
    def forget(self, tenant: str) -> None:
        """Read ``tenant``'s settings again on its next request."""


SETTINGS_CACHE: web.AppKey[ForgetsTenants] = web.AppKey("settings_cache", ForgetsTenants)


def settings_changed(request: web.Request, tenant: str) -> None:
    """Apply a tenant's new settings from its next request on, not after the cache's expiry."""
    cache = request.config_dict.get(SETTINGS_CACHE)
    if cache is not None:
        cache.forget(tenant)
