"""The agent tells each app instance whose X-Forwarded-For to believe: the cluster's servers
(their edges) and the configured trusted proxies, as --trusted-proxy arguments the app parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import parse_config
from agent.driver import InstanceSpec, app_arguments
from agent.loop import app_trusted_proxies
from app.__main__ import parse_settings
from tests.unit.test_config import ENV, with_changes


def spec(proxies: tuple[str, ...]) -> InstanceSpec:
    return InstanceSpec(
        "s1", 1, "m1", "127.0.0.1", 7410, "example.test", ("acme",), Path("slot"),
        trusted_proxies=proxies,
    )  # fmt: skip


def test_every_server_and_the_configured_proxies_are_trusted(tmp_path: Path) -> None:
    data = with_changes(
        {
            "servers[1].host": "10.0.0.2",
            "servers[2].host": "fd00::3",
            "servers[3].host": "localhost",
            "throttle": {"trusted_proxies": ["192.0.2.0/24", "10.0.0.2"]},
        }
    )
    config = parse_config(data, tmp_path, ENV)
    assert app_trusted_proxies(config) == (
        "127.0.0.1/32", "10.0.0.2/32", "fd00::3/128", "::1/128", "192.0.2.0/24",
    )  # fmt: skip


def test_a_server_named_by_a_hostname_is_left_out(tmp_path: Path) -> None:
    data = with_changes({"servers[1].host": "edge2.example.test"})
    config = parse_config(data, tmp_path, ENV)
    assert app_trusted_proxies(config) == ("127.0.0.1/32",)


def test_the_argv_carries_each_trusted_proxy_and_the_app_reads_them_back() -> None:
    argv = app_arguments(spec(("10.0.0.2/32", "fd00::/64")))
    at = [i for i, arg in enumerate(argv) if arg == "--trusted-proxy"]
    assert [argv[i + 1] for i in at] == ["10.0.0.2/32", "fd00::/64"]
    assert parse_settings(argv).trusted_proxies == ("10.0.0.2/32", "fd00::/64")


def test_no_proxies_no_arguments() -> None:
    assert "--trusted-proxy" not in app_arguments(spec(()))
    assert parse_settings(app_arguments(spec(()))).trusted_proxies == ()


@pytest.mark.parametrize("bad", ["edge.example", "10.0.0.300/32", "10.0.0.0/33", ""])
def test_the_app_refuses_a_proxy_that_is_no_address_range(bad: str) -> None:
    argv = app_arguments(spec(()))
    with pytest.raises(SystemExit):
        parse_settings([*argv, "--trusted-proxy", bad])
