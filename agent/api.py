"""The agent's HTTP API: health, readiness, metrics, status and decisions."""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.aiohttp import make_aiohttp_handler

from agent.clock import Clock
from agent.explain import explained
from agent.loop import DecisionLoop
from agent.metrics import AgentMetrics, http_reject_reason
from agent.status import decision_document, decisions_document, status_document
from agent.status_page import PageSources, status_routes
from agent.stops_api import (
    lift_command,
    not_a_tenant,
    pin_command,
    pin_duration,
    stops_document,
)
from agent.tenantcmd import Provisioned, ProvisionError
from consensus.commands import Command, DrainServer, ReturnServer, SetMode
from consensus.protocol import Consensus

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Creates a configured tenant: (name, admin e-mail, display name) -> its setup link.
Provisioner = Callable[[str, str, str | None], Awaitable[Provisioned]]
# The largest JSON body an operator call takes.
MAX_OPERATOR_BODY = 4096


@dataclass(frozen=True, slots=True)
class ApiContext:
    cluster: str
    server: str
    pid: int
    consensus: Consensus
    loop: DecisionLoop
    clock: Clock
    metrics: AgentMetrics
    # /healthz fails when the decision loop has not completed a tick for this long.
    stall_after_s: float
    # Bearer token for operator calls.
    api_token: str = ""
    # POST /v1/traffic: other agents' traffic reports when the MQTT broker fails them.
    traffic: _Handler | None = None
    # POST /v1/tenants: provision a configured tenant in its slot's data.
    provision: Provisioner | None = None
    # The `backups` list of GET /v1/status: per slot, its last good backup and last error.
    backups: Callable[[], list[dict[str, Any]]] | None = None
    # The `mqtt` block of GET /v1/status: the events connection (None: no broker configured).
    mqtt: Callable[[], dict[str, Any]] | None = None
    # The `resources` block of GET /v1/status: this server's resource conditions.
    resources: Callable[[], dict[str, Any]] | None = None
    # The `instances` block: the app instances this server runs, as its driver sees them.
    instances: Callable[[], list[dict[str, Any]]] | None = None


def build_api(ctx: ApiContext) -> web.Application:
    app = web.Application(
        middlewares=[_counted(ctx.metrics), _json_errors], client_max_size=1024 * 1024
    )
    api = _Api(ctx)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(ctx.metrics.registry))
    app.router.add_get("/v1/status", api.status)
    # GET / and GET /decisions/{id}: the status page, from the same data as the JSON.
    page = PageSources(api.status_doc, ctx.consensus.snapshot, ctx.clock.wall)
    app.router.add_routes(status_routes(page))
    app.router.add_get("/v1/decisions", api.decisions)
    app.router.add_get("/v1/decisions/{id}", api.decision)
    app.router.add_post("/v1/servers/{name}/return", api.return_server)
    app.router.add_post("/v1/mode/resume", api.resume)
    app.router.add_post("/v1/servers/{name}/drain", api.drain_server)
    app.router.add_get("/v1/stops", api.stops)
    if ctx.traffic is not None:
        app.router.add_post("/v1/traffic", ctx.traffic)
    app.router.add_post("/v1/stops/{subdomain}/lift", api.lift_stop)
    app.router.add_post("/v1/stops/{subdomain}/pin", api.pin_stop)
    if ctx.provision is not None:
        app.router.add_post("/v1/tenants", api.create_tenant)
    return app


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, indent=None))


def _counted(metrics: AgentMetrics) -> Middleware:
    """A middleware that counts every refused request (4xx) by a fixed reason."""

    @web.middleware
    async def count(request: web.Request, handler: _Handler) -> web.StreamResponse:
        response = await handler(request)
        if 400 <= response.status < 500:
            metrics.rejected_input("http", http_reject_reason(response.status))
        return response

    return count


@web.middleware
async def _json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Every error of this API is JSON: {"error": ..., "status": ...}."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = {"error": exc.reason, "status": exc.status}
        response = _json(body, status=exc.status)
        if exc.status == 405:
            response.headers["Allow"] = exc.headers.get("Allow", "GET")
        return response


class _Api:
    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx

    async def healthz(self, _: web.Request) -> web.Response:
        report = self._ctx.loop.last_report
        now = self._ctx.clock.monotonic()
        if report is None:
            return _json({"status": "starting"}, status=503)
        age_s = now - report.at_monotonic
        if age_s > self._ctx.stall_after_s:
            return _json({"status": "stalled", "last_tick_age_s": round(age_s, 3)}, status=503)
        return _json(
            {"status": "ok", "last_tick_age_s": round(age_s, 3), "summary": report.summary}
        )

    async def readyz(self, _: web.Request) -> web.Response:
        raft = self._ctx.consensus.snapshot().raft
        joined = self._ctx.loop.joined()
        ready = joined and raft.leader is not None
        body = {"ready": ready, "joined": joined, "leader": raft.leader}
        return _json(body, status=200 if ready else 503)

    async def status(self, _: web.Request) -> web.Response:
        return _json(self.status_doc())

    def status_doc(self) -> dict[str, Any]:
        snap = self._ctx.consensus.snapshot()
        doc = status_document(self._ctx.cluster, self._ctx.server, self._ctx.pid, snap)
        doc["backups"] = self._ctx.backups() if self._ctx.backups is not None else []
        doc["mqtt"] = self._ctx.mqtt() if self._ctx.mqtt is not None else None
        doc["resources"] = self._ctx.resources() if self._ctx.resources is not None else None
        doc["instances"] = self._ctx.instances() if self._ctx.instances is not None else []
        return doc

    async def decisions(self, _: web.Request) -> web.Response:
        return _json(decisions_document(self._ctx.consensus.snapshot()))

    async def decision(self, request: web.Request) -> web.Response:
        decision_id = request.match_info["id"]
        decision = self._ctx.consensus.snapshot().state.decision(decision_id)
        if decision is None:
            return _json({"error": f"no decision {decision_id[:64]!r}", "status": 404}, 404)
        snap_state = self._ctx.consensus.snapshot().state
        return _json({**decision_document(decision), **explained(snap_state, decision)})

    async def return_server(self, request: web.Request) -> web.Response:
        """Operator: put a failed, quarantined or drained server back into the spare pool."""
        return await self._server_call(request, ReturnServer, "return")

    async def drain_server(self, request: web.Request) -> web.Response:
        """Operator: take a server out of service; its slots move to spares, no verdict."""
        return await self._server_call(request, DrainServer, "drain")

    async def _server_call(
        self, request: web.Request, make: type[ReturnServer] | type[DrainServer], verb: str
    ) -> web.Response:
        denied = _authorize(request, self._ctx.api_token)
        if denied is not None:
            return denied
        name = request.match_info["name"]
        if self._ctx.consensus.snapshot().state.server(name) is None:
            return _json({"error": f"no server {name[:64]!r}", "status": 404}, 404)
        reason = await _reason(request)
        if isinstance(reason, web.Response):
            return reason
        command = make(
            id=f"{verb}:{name}:{uuid.uuid4().hex}",
            at=self._ctx.clock.wall(),
            server=name,
            reason=reason,
        )
        failed = await _submit_operator(self._ctx, command)
        return failed or _json({"ok": True, "server": name, "reason": reason})

    async def resume(self, request: web.Request) -> web.Response:
        """Operator: leave cascade (or recovering) mode now; replacement resumes at once."""
        denied = _authorize(request, self._ctx.api_token)
        if denied is not None:
            return denied
        reason = await _reason(request)
        if isinstance(reason, web.Response):
            return reason
        state = self._ctx.consensus.snapshot().state
        command = SetMode(
            id=f"resume:{uuid.uuid4().hex}",
            at=self._ctx.clock.wall(),
            mode="normal",
            reason=reason,
            evidence={"rule": "operator_resume", "previous_mode": state.mode},
            operator=True,
        )
        failed = await _submit_operator(self._ctx, command)
        return failed or _json({"ok": True, "mode": "normal", "reason": reason})

    async def stops(self, _: web.Request) -> web.Response:
        state = self._ctx.consensus.snapshot().state
        return _json(stops_document(state, self._ctx.clock.wall()))

    async def lift_stop(self, request: web.Request) -> web.Response:
        """Operator: let a stopped tenant in again now."""
        denied = _authorize(request, self._ctx.api_token)
        if denied is not None:
            return denied
        subdomain = request.match_info["subdomain"].lower()
        state = self._ctx.consensus.snapshot().state
        missing = not_a_tenant(state, subdomain)
        if missing is not None:
            return missing
        reason = await _reason(request)
        if isinstance(reason, web.Response):
            return reason
        command = lift_command(subdomain, reason, self._ctx.clock.wall())
        failed = await _submit_operator(self._ctx, command)
        return failed or _json({"ok": True, "subdomain": subdomain, "reason": reason})

    async def pin_stop(self, request: web.Request) -> web.Response:
        """Operator: stop a tenant for `for_s` seconds, whatever its traffic."""
        denied = _authorize(request, self._ctx.api_token)
        if denied is not None:
            return denied
        subdomain = request.match_info["subdomain"].lower()
        missing = not_a_tenant(self._ctx.consensus.snapshot().state, subdomain)
        if missing is not None:
            return missing
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        for_s = pin_duration(body)
        if isinstance(for_s, str):
            return _json({"error": for_s, "status": 400}, 400)
        reason = body.get("reason", "operator pin") if isinstance(body, dict) else "operator pin"
        if not isinstance(reason, str) or len(reason) > 500:
            return _json(
                {"error": "reason must be a string of at most 500 characters", "status": 400}, 400
            )
        wall = self._ctx.clock.wall()
        failed = await _submit_operator(self._ctx, pin_command(subdomain, for_s, reason, wall))
        body_out = {"ok": True, "subdomain": subdomain, "until": wall + for_s, "reason": reason}
        return failed or _json(body_out)

    async def create_tenant(self, request: web.Request) -> web.Response:
        """Operator: POST {"name", "admin_email", "display_name"?} creates a tenant listed in
        a slot, with its owner; 201 and the owner's one-time setup link."""
        denied = _authorize(request, self._ctx.api_token)
        if denied is not None:
            return denied
        body = await _small_object(request)
        if isinstance(body, web.Response):
            return body
        fields = {k: body.get(k) for k in ("name", "admin_email", "display_name")}
        name, email, display = fields["name"], fields["admin_email"], fields["display_name"]
        if not isinstance(name, str) or not isinstance(email, str):
            return _error(400, "name and admin_email are required strings")
        if display is not None and not isinstance(display, str):
            return _error(400, "display_name must be a string")
        assert self._ctx.provision is not None  # the route exists only with a provisioner
        try:
            done = await self._ctx.provision(name, email, display)
        except ProvisionError as exc:
            return _error(exc.status, str(exc))
        return _json(
            {
                "tenant": done.tenant,
                "slot": done.slot,
                "admin_email": done.admin_email,
                "setup_link": done.setup_link,
                "setup_token": done.setup_token,
            },
            status=201,
        )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message, "status": status}, status)


async def _small_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object body, at most MAX_OPERATOR_BODY bytes; else the 4xx answer."""
    raw = await _read_body(request)
    if isinstance(raw, web.Response):
        return raw
    body = _parse_json(raw)
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    return body


async def _read_body(request: web.Request) -> bytes | web.Response:
    """The whole body, at most MAX_OPERATOR_BODY bytes; else the 413 (or 400) answer."""
    too_big = f"the body takes at most {MAX_OPERATOR_BODY} bytes"
    if (request.content_length or 0) > MAX_OPERATOR_BODY:
        return _error(413, too_big)
    raw = bytearray()
    try:
        async for chunk in request.content.iter_chunked(MAX_OPERATOR_BODY):
            raw += chunk
            if len(raw) > MAX_OPERATOR_BODY:
                return _error(413, too_big)
    except web.RequestPayloadError:  # e.g. a Content-Encoding the bytes do not follow
        unreadable = _error(400, "the body could not be read")
        unreadable.force_close()  # the rest of the stream cannot be read either
        return unreadable
    return bytes(raw)


_NOT_JSON: Final = object()


def _parse_json(raw: bytes) -> object:
    """The JSON value of `raw` (UTF-8, -16 or -32), or _NOT_JSON; never raises."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # bad UTF-8 is a ValueError too; so is a huge int
        return _NOT_JSON


async def _json_body(request: web.Request) -> object:
    """An operator call's optional JSON body: None without one, else its value or the 4xx."""
    if not request.body_exists:
        return None
    raw = await _read_body(request)
    if isinstance(raw, web.Response):
        return raw
    body = _parse_json(raw)
    return _error(400, "body must be JSON") if body is _NOT_JSON else body


async def _submit_operator(ctx: ApiContext, command: Command) -> web.Response | None:
    """Submit an operator command; None when it committed, the error answer otherwise."""
    result = await ctx.consensus.submit(command, timeout_s=5.0)
    if result.status == "failed":
        return _json({"error": result.reason, "status": 503}, 503)
    if not result.ok:
        return _json({"error": result.reason, "status": 409}, 409)
    return None


def _authorize(request: web.Request, token: str) -> web.Response | None:
    """None when the request carries the operator token; the 401 answer otherwise."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token):
        return None
    response = _json({"error": "operator token required", "status": 401}, 401)
    response.headers["WWW-Authenticate"] = 'Bearer realm="moonwatch"'
    return response


async def _reason(request: web.Request) -> str | web.Response:
    """The operator's reason from an optional JSON body {"reason": "..."}."""
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    reason = body.get("reason") if isinstance(body, dict) else None
    if reason is None:
        return "operator request"
    if not isinstance(reason, str) or len(reason) > 500:
        return _json(
            {"error": "reason must be a string of at most 500 characters", "status": 400}, 400
        )
    return reason
