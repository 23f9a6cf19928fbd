"""The docker driver's pure parts: the container it asks for, the image's contents, the
`image build` reference, the config block, and the app's health-check command."""

from __future__ import annotations

import ast
import asyncio
import gc
import importlib.metadata as metadata
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.config_policy import AppConfig
from agent.docker_client import DockerUnreachable, open_docker, unix_socket_path
from agent.docker_image import APP_DISTRIBUTIONS, Layout, distribution_closure, dockerfile
from agent.driver import DATABASE_URL_ENV
from agent.driver_docker import DockerRuntime, DockerSettings, container_name
from agent.imagecmd import split_reference
from agent.instances import InstanceSpec
from app.healthcheck import check, main

REPO = Path(__file__).resolve().parents[2]
SETTINGS = DockerSettings(url="unix:///run/d.sock", image="moonwatch-app:local", cluster="c1",
                          server="m1", memory_mb=256, cpus=0.5)  # fmt: skip


def spec(database_url: str | None = None) -> InstanceSpec:
    return InstanceSpec(
        slot="s1", epoch=3, server="m1", host="127.0.0.1", port=7410, base_domain="localhost",
        tenants=("acme",), data_dir=Path("/srv/mw/slots/s1"),
        overlap_log=Path("/srv/mw/overlap/s1.log"), database_url=database_url,
    )  # fmt: skip


def test_the_container_is_hardened_labelled_and_gets_its_secret_in_the_environment() -> None:
    args = DockerRuntime(SETTINGS).create_arguments(
        spec("postgresql://u:pw@db/x"), "/py/bin/python"
    )
    host = args["host_config"]
    assert args["name"] == container_name(SETTINGS, "s1") == "moonwatch-c1-m1-s1"
    assert args["labels"]["io.moonwatch.epoch"] == "3"
    assert args["stdin_open"] and not args["detach"] and not args["tty"]
    assert host["read_only"] and host["cap_drop"] == ["ALL"]
    assert host["security_opt"] == ["no-new-privileges"]
    assert host["network_mode"] == host["pid_mode"] == "host"
    assert host["restart_policy"] == {"Name": "no"}
    assert host["mem_limit"] == "256m" and host["nano_cpus"] == 500_000_000
    assert set(host["binds"]) == {"/srv/mw/slots/s1", "/srv/mw/overlap"}
    assert args["environment"] == {DATABASE_URL_ENV: "postgresql://u:pw@db/x"}
    assert not any("pw@" in word for word in args["command"])  # never in argv
    assert args["healthcheck"]["test"][:4] == ["CMD", "/py/bin/python", "-m", "app.healthcheck"]
    assert "--parent-pid" not in args["command"]  # its parent is the container runtime


def test_without_limits_or_database_none_are_asked_for() -> None:
    plain = DockerSettings("unix:///run/d.sock", "moonwatch-app:local", "c1", "m1")
    args = DockerRuntime(plain).create_arguments(spec(), "/py")
    assert "mem_limit" not in args["host_config"] and "nano_cpus" not in args["host_config"]
    assert args["environment"] == {}


def third_party_imports(package: Path) -> set[str]:
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"app", "__future__"}


def test_the_image_carries_every_distribution_the_app_imports() -> None:
    closure = distribution_closure(APP_DISTRIBUTIONS)
    names = {d.metadata["Name"].lower() for d in closure}
    provided = {
        module
        for module, dists in metadata.packages_distributions().items()
        if any(d.lower() in names for d in dists)
    }
    missing = third_party_imports(REPO / "app") - provided
    assert not missing, f"app imports {missing}, which the image would lack"
    assert {"aiohttp", "multidict", "yarl", "markupsafe", "argon2-cffi-bindings"} <= names
    assert not names & {"docker", "pysyncobj", "pyroute2", "pytest"}  # the agent's, not the app's


def test_the_dockerfile_pulls_nothing() -> None:
    text = dockerfile(Layout(Path("/opt/py/bin/python3.11"), Path("/opt/py/lib/python3.11"),
                             REPO / "app"), "abc")  # fmt: skip
    assert text.startswith("FROM scratch\n")
    assert '"/opt/py/bin/python3.11", "-m", "app"' in text


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("moonwatch-app:local", ("moonwatch-app", "local")),
        ("moonwatch-app", ("moonwatch-app", "latest")),
        ("registry.local:5000/mw/app", ("registry.local:5000/mw/app", "latest")),
        ("registry.local:5000/mw/app:v2", ("registry.local:5000/mw/app", "v2")),
    ],
)
def test_image_references_split_as_docker_does(reference: str, expected: tuple[str, str]) -> None:
    assert split_reference(reference) == expected


@pytest.mark.parametrize(
    ("block", "error"),
    [
        ({"driver": "podman"}, "driver"),
        ({"driver": "docker", "docker": {"url": "http://x"}}, "docker.url"),
        ({"driver": "docker", "docker": {"image": "Upper:Case"}}, "docker.image"),
        ({"driver": "docker", "docker": {"memory_mb": 8}}, "docker.memory_mb"),
        ({"driver": "docker", "docker": {"cpus": 0}}, "docker.cpus"),
        ({"driver": "docker", "docker": {"pull": True}}, "docker.pull"),
    ],
)
def test_bad_docker_settings_are_errors_naming_the_key(
    block: dict[str, object], error: str
) -> None:
    with pytest.raises(ValueError, match=error.replace(".", r"\.")):
        AppConfig.model_validate(block)


async def test_the_health_check_command_checks_slot_and_epoch() -> None:
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "slot": "s1", "epoch": 3})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("/healthz"))
        ok = await asyncio.to_thread(check, url, "s1", 3)
        wrong = await asyncio.to_thread(check, url, "s1", 4)
        other = await asyncio.to_thread(check, url, "s2", None)
    assert ok is None
    assert wrong is not None and "not 4" in wrong
    assert other is not None and "not 's2'" in other
    with pytest.raises(SystemExit):
        main([url.replace("http", "ftp")])


def test_the_health_check_command_fails_on_nothing_listening(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["http://127.0.0.1:9/healthz", "--timeout", "0.5"]) == 1
    assert "127.0.0.1:9" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("unix:///run/docker.sock", "/run/docker.sock"),
        ("http+unix:///x/d.sock", "/x/d.sock"),
        ("unix://run/d.sock", "/run/d.sock"),
        ("tcp://127.0.0.1:2375", None),
    ],
)
def test_unix_docker_urls_name_their_socket(url: str, path: str | None) -> None:
    assert unix_socket_path(url) == path


def test_an_absent_dockerd_is_a_clear_error_and_leaves_no_socket_open(tmp_path: Path) -> None:
    """The SDK alone would leave its failed socket for the collector (a ResourceWarning,
    an error under this suite's warning filter)."""
    url = f"unix://{tmp_path / 'docker.sock'}"
    for _ in range(3):
        with pytest.raises(DockerUnreachable, match=r"docker\.sock"):
            open_docker(url, 1)
    gc.collect()
