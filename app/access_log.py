"""Access lines without query strings or Referer: join and reset links carry tokens there."""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse


class PathOnlyAccessLogger(AbstractAccessLogger):
    """One line per request: peer, method, path (never its query), status, bytes, seconds."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %s %s %.3f",
            request.remote or "-",
            request.method,
            request.path,
            response.status,
            response.body_length,
            time,
        )
