"""Tenant stops over the agent's HTTP API and the `moonwatch stops|pin|lift` command line.

One agent's API on 127.0.0.1 over in-memory consensus; its clock is frozen, so every time in
the answers is exact. The decision loop is not run: nothing but the test changes the state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.cli import main
from agent.config import ClusterConfig, parse_config
from agent.loop import bootstrap_command
from agent.stops_api import MAX_PIN_S, parse_duration
from agent.wiring import build_agent
from consensus.commands import Command, StopTenant
from consensus.memory import MemoryConsensus, MemoryLog
from tests.support import StaticDriver, cluster_config, write_config

WALL = 1_700_000_000.0
TOKEN = "test-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FrozenClock:
    """Wall time stands still at WALL; sleeping only moves the monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class IdleDriver(StaticDriver):
    """No app instances: the decision loop, their only user, is not run here."""


@dataclass
class Api:
    config: ClusterConfig
    config_path: Path
    consensus: MemoryConsensus
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.config.server("a1").agent_url

    async def get(self, path: str) -> dict[str, Any]:
        async with self.http.get(self.url + path) as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            return body

    async def post(
        self,
        path: str,
        *,
        json: object = None,
        data: bytes | None = None,
        headers: Mapping[str, str] = AUTH,
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        kwargs: dict[str, Any] = {"headers": dict(headers)}
        if data is not None:
            kwargs["data"] = data
        elif json is not None:
            kwargs["json"] = json
        async with self.http.post(self.url + path, **kwargs) as resp:
            return resp.status, await resp.json(), resp.headers

    async def commit(self, command: Command) -> None:
        assert (await self.consensus.submit(command, timeout_s=1.0)).ok

    async def cli(self, *argv: str) -> int:
        """`moonwatch ARGV --url <this agent> --config <its config>` (the CLI blocks: a thread)."""
        full = [*argv, f"--url={self.url}", f"--config={self.config_path}"]
        return await asyncio.to_thread(main, full)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    raw = cluster_config(tmp_path / "data")
    raw["slots"][0]["tenants"] = ["acme", "globex"]
    config_path = write_config(tmp_path / "cluster.yml", raw)
    config = parse_config(raw, tmp_path, {})
    clock = FrozenClock()
    log = MemoryLog(voters=config.voters)
    consensus = MemoryConsensus(log, "a1", clock)
    await consensus.start()
    log.elect("a1")
    assert (await consensus.submit(bootstrap_command(config, WALL - 60.0), 1.0)).ok
    parts = build_agent(config, "a1", clock, consensus=consensus, driver=IdleDriver())
    runner = web.AppRunner(parts.api)
    await runner.setup()
    await web.TCPSite(runner, parts.host, parts.agent_port).start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Api(config, config_path, consensus, http)
    finally:
        await runner.cleanup()
        await consensus.stop()


def auto_stop(tenant: str, since: float, until: float, cid: str) -> StopTenant:
    return StopTenant(
        id=cid,
        at=since,
        subdomain=tenant,
        until=until,
        reason="over its rps limit for 1.0 s",
        offence=1,
        evidence={"rule": "rps", "rps": 42.0, "limit": 20.0},
    )


# ---------------------------------------------------------------- GET /v1/stops


async def test_no_stops_at_first(api: Api) -> None:
    assert await api.get("/v1/stops") == {"stops": []}


async def test_stops_lists_only_stops_in_force(api: Api) -> None:
    await api.commit(auto_stop("globex", WALL - 50.0, WALL - 20.0, "old"))
    await api.commit(auto_stop("acme", WALL - 10.0, WALL + 20.0, "new"))
    assert await api.get("/v1/stops") == {
        "stops": [
            {
                "subdomain": "acme",
                "since": WALL - 10.0,
                "until": WALL + 20.0,
                "remaining_s": 20.0,
                "reason": "over its rps limit for 1.0 s",
                "offence": 1,
                "pinned": False,
                "evidence": {"rule": "rps", "rps": 42.0, "limit": 20.0},
            }
        ]
    }


# ---------------------------------------------------------------- pin and lift


async def test_pin_commits_a_pinned_stop_everyone_sees(api: Api) -> None:
    status, body, _ = await api.post(
        "/v1/stops/ACME/pin", json={"for_s": 900, "reason": "abuse ticket 42"}
    )
    assert status == 200
    assert body == {
        "ok": True,
        "subdomain": "acme",
        "until": WALL + 900.0,
        "reason": "abuse ticket 42",
    }
    (listed,) = (await api.get("/v1/stops"))["stops"]
    assert listed["subdomain"] == "acme" and listed["pinned"] is True
    assert (listed["since"], listed["until"], listed["remaining_s"]) == (WALL, WALL + 900, 900.0)
    status_doc = await api.get("/v1/status")
    assert status_doc["stops"] == [
        {"subdomain": "acme", "until": WALL + 900.0, "reason": "abuse ticket 42", "pinned": True}
    ]
    last = (await api.get("/v1/decisions"))["decisions"][-1]
    assert (last["kind"], last["subject"], last["at"]) == ("tenant_stopped", "acme", WALL)
    assert last["evidence"] == {
        "until": WALL + 900.0,
        "for_s": 900.0,
        "reason": "abuse ticket 42",
        "offence": 1,
        "operator": True,
    }


async def test_pin_without_a_reason_says_operator_pin(api: Api) -> None:
    status, body, _ = await api.post("/v1/stops/acme/pin", json={"for_s": 60.5})
    assert status == 200 and body["reason"] == "operator pin" and body["until"] == WALL + 60.5


async def test_lift_removes_the_stop_and_records_why(api: Api) -> None:
    await api.commit(auto_stop("acme", WALL - 10.0, WALL + 20.0, "auto"))
    status, body, _ = await api.post("/v1/stops/acme/lift", json={"reason": "false alarm"})
    assert status == 200
    assert body == {"ok": True, "subdomain": "acme", "reason": "false alarm"}
    assert await api.get("/v1/stops") == {"stops": []}
    assert (await api.get("/v1/status"))["stops"] == []
    last = (await api.get("/v1/decisions"))["decisions"][-1]
    assert (last["kind"], last["subject"], last["at"]) == ("stop_lifted", "acme", WALL)
    assert last["evidence"] == {
        "reason": "false alarm",
        "operator": True,
        "stopped_since": WALL - 10.0,
        "until": WALL + 20.0,
        "pinned": False,
    }


async def test_lift_without_a_body_is_an_operator_request(api: Api) -> None:
    await api.commit(auto_stop("acme", WALL - 10.0, WALL + 20.0, "auto"))
    status, body, _ = await api.post("/v1/stops/acme/lift")
    assert status == 200 and body["reason"] == "operator request"


async def test_lifting_a_tenant_that_is_not_stopped_is_a_conflict(api: Api) -> None:
    status, body, _ = await api.post("/v1/stops/acme/lift")
    assert status == 409
    assert body == {"error": "lift_stop: 'acme' is not stopped", "status": 409}


@pytest.mark.parametrize("verb", ["pin", "lift"])
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong-token"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, id="wrong-scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty-token"),
    ],
)
async def test_pin_and_lift_need_the_operator_token(
    api: Api, verb: str, headers: dict[str, str]
) -> None:
    await api.commit(auto_stop("acme", WALL - 10.0, WALL + 20.0, "auto"))
    status, body, got = await api.post(
        f"/v1/stops/acme/{verb}", json={"for_s": 60}, headers=headers
    )
    assert status == 401
    assert body == {"error": "operator token required", "status": 401}
    assert got["WWW-Authenticate"] == 'Bearer realm="moonwatch"'
    (still,) = (await api.get("/v1/stops"))["stops"]
    assert still["pinned"] is False


@pytest.mark.parametrize("verb", ["pin", "lift"])
@pytest.mark.parametrize("tenant", ["mallory", "a" * 300])
async def test_pin_and_lift_of_an_unknown_tenant_are_404(api: Api, verb: str, tenant: str) -> None:
    status, body, _ = await api.post(f"/v1/stops/{tenant}/{verb}", json={"for_s": 60})
    assert status == 404
    assert body == {"error": f"no tenant {tenant[:64]!r}", "status": 404}


LONG_REASON = "x" * 501
FOR_S_ERROR = f"for_s must be more than 0 and at most {MAX_PIN_S:.0f}"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param(b"{not json", "body must be JSON", id="not-json"),
        pytest.param(b"", "for_s (seconds) is required", id="empty-body"),
        pytest.param(b"{}", "for_s (seconds) is required", id="missing-for_s"),
        pytest.param(b"[60]", "for_s (seconds) is required", id="not-an-object"),
        pytest.param(b'{"for_s": null}', "for_s (seconds) is required", id="null"),
        pytest.param(b'{"for_s": true}', "for_s (seconds) is required", id="boolean"),
        pytest.param(b'{"for_s": "60"}', "for_s (seconds) is required", id="string"),
        pytest.param(b'{"for_s": "NaN"}', "for_s (seconds) is required", id="nan-as-string"),
        pytest.param(b'{"for_s": NaN}', FOR_S_ERROR, id="nan-literal"),
        pytest.param(b'{"for_s": Infinity}', FOR_S_ERROR, id="infinity-literal"),
        pytest.param(b'{"for_s": 1e999}', FOR_S_ERROR, id="overflowing"),
        pytest.param(b'{"for_s": 0}', FOR_S_ERROR, id="zero"),
        pytest.param(b'{"for_s": -60}', FOR_S_ERROR, id="negative"),
        pytest.param(b'{"for_s": 2592001}', FOR_S_ERROR, id="over-30-days"),
        pytest.param(b'{"for_s": 1e300}', FOR_S_ERROR, id="huge"),
        pytest.param(
            b'{"for_s": 60, "reason": 5}',
            "reason must be a string of at most 500 characters",
            id="reason-not-a-string",
        ),
        pytest.param(
            f'{{"for_s": 60, "reason": "{LONG_REASON}"}}'.encode(),
            "reason must be a string of at most 500 characters",
            id="reason-too-long",
        ),
    ],
)
async def test_pin_refuses_bad_bodies(api: Api, data: bytes, error: str) -> None:
    status, body, _ = await api.post("/v1/stops/acme/pin", data=data)
    assert status == 400
    assert body["error"] == error
    assert await api.get("/v1/stops") == {"stops": []}


@pytest.mark.parametrize("verb", ["pin", "lift"])
async def test_a_bad_reason_is_a_full_json_error(api: Api, verb: str) -> None:
    await api.commit(auto_stop("acme", WALL - 10.0, WALL + 20.0, "auto"))
    status, body, _ = await api.post(f"/v1/stops/acme/{verb}", json={"for_s": 60, "reason": 5})
    assert status == 400
    assert body == {"error": "reason must be a string of at most 500 characters", "status": 400}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param(b"{not json", "body must be JSON", id="not-json"),
        pytest.param(
            f'{{"reason": "{LONG_REASON}"}}'.encode(),
            "reason must be a string of at most 500 characters",
            id="reason-too-long",
        ),
        pytest.param(
            b'{"reason": ["x"]}',
            "reason must be a string of at most 500 characters",
            id="reason-not-a-string",
        ),
    ],
)
async def test_lift_refuses_bad_bodies(api: Api, data: bytes, error: str) -> None:
    await api.commit(auto_stop("acme", WALL - 10.0, WALL + 20.0, "auto"))
    status, body, _ = await api.post("/v1/stops/acme/lift", data=data)
    assert status == 400 and body["error"] == error
    assert len((await api.get("/v1/stops"))["stops"]) == 1


async def test_pin_refuses_an_integer_too_big_for_a_float(api: Api) -> None:
    huge = b'{"for_s": 1' + b"0" * 400 + b"}"
    async with api.http.post(api.url + "/v1/stops/acme/pin", data=huge, headers=AUTH) as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": FOR_S_ERROR, "status": 400}


async def test_a_pin_longest_allowed_is_accepted(api: Api) -> None:
    status, body, _ = await api.post("/v1/stops/acme/pin", json={"for_s": MAX_PIN_S})
    assert status == 200 and body["until"] == WALL + MAX_PIN_S


# ---------------------------------------------------------------- the command line


async def test_cli_stops_pin_and_lift(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    assert await api.cli("stops") == 0
    assert capsys.readouterr().out.strip() == "no tenant is stopped"

    assert await api.cli("pin", "acme", "--for", "15m") == 0
    assert capsys.readouterr().out.strip() == "done: /v1/stops/acme/pin (pinned by an operator)"
    (pinned,) = (await api.get("/v1/stops"))["stops"]
    assert (pinned["until"], pinned["pinned"]) == (WALL + 900.0, True)

    assert await api.cli("stops") == 0
    assert capsys.readouterr().out.splitlines() == [
        "SUBDOMAIN  LEFT   STOP    REASON",
        "acme       900 s  pinned  pinned by an operator",
    ]

    assert await api.cli("lift", "acme", "--reason", "ticket closed") == 0
    assert capsys.readouterr().out.strip() == "done: /v1/stops/acme/lift (ticket closed)"
    assert await api.get("/v1/stops") == {"stops": []}
    last = (await api.get("/v1/decisions"))["decisions"][-1]
    assert last["kind"] == "stop_lifted" and last["evidence"]["reason"] == "ticket closed"


async def test_cli_stops_json_is_the_raw_document(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    await api.commit(auto_stop("acme", WALL - 10.0, WALL + 20.0, "auto"))
    assert await api.cli("stops", "--json") == 0
    out = capsys.readouterr().out
    assert '"subdomain": "acme"' in out and '"remaining_s": 20.0' in out


async def test_cli_shows_an_automatic_stop_by_its_number(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    await api.commit(auto_stop("acme", WALL - 10.0, WALL + 20.0, "auto"))
    assert await api.cli("stops") == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:4] == ["acme", "20", "s", "#1"]


@pytest.mark.parametrize("duration", ["1x", "0", "-5m", "inf", "nan", "m", "1e999s"])
async def test_cli_pin_refuses_a_bad_duration(
    api: Api, capsys: pytest.CaptureFixture[str], duration: str
) -> None:
    assert await api.cli("pin", "acme", f"--for={duration}") == 2
    err = capsys.readouterr().err
    assert err.startswith("moonwatch pin: --for: not a positive duration")
    assert "(use e.g. 90s, 15m, 1h, 2d)" in err
    assert await api.get("/v1/stops") == {"stops": []}


async def test_cli_pin_of_an_unknown_tenant_fails(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await api.cli("pin", "mallory", "--for", "1h") == 1
    assert capsys.readouterr().err.strip() == "moonwatch: no tenant 'mallory' (HTTP 404)"


async def test_cli_pin_longer_than_allowed_fails(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await api.cli("pin", "acme", "--for", "31d") == 1
    assert f"{FOR_S_ERROR} (HTTP 400)" in capsys.readouterr().err


async def test_cli_lift_of_a_running_tenant_fails(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await api.cli("lift", "acme") == 1
    assert "is not stopped (HTTP 409)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("90", 90.0, id="bare-seconds"),
        pytest.param("90s", 90.0, id="seconds"),
        pytest.param("15m", 900.0, id="minutes"),
        pytest.param("1.5h", 5400.0, id="fractional-hours"),
        pytest.param("2d", 172800.0, id="days"),
        pytest.param(" 15M ", 900.0, id="case-and-space"),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
