"""Unit tests for agent.config: every validation rule, YAML loading and `check-config`."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr, ValidationError

from agent.config import (
    ClusterConfig,
    ConfigError,
    TimingConfig,
    load_config,
    parse_config,
)
from agent.configcheck import check_config_main

REPO_CLUSTER_YML = Path(__file__).resolve().parents[2] / "cluster.yml"
DELETE = object()
ENV = {
    "DB_URL": "postgresql://app:db-password-from-env@127.0.0.1:5432/slot1",
    "RAFT_PW": "raft-password-from-env",
    "TOKEN": "token-from-env",
    "EMPTY": "",
    "SHORT": "1234567",
}
SECRET_FILES = {
    "raft.txt": "raft-password-from-file\n",
    "token.txt": "token-from-file\n",
    "empty.txt": "\n",
    "short.txt": "1234567\n",
}
TIMING_KEYS = tuple(k for k in TimingConfig.model_fields if k.endswith("_s"))


def server(name: str, n: int, role: str = "active", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "host": "127.0.0.1",
        "agent_port": 7100 + n,
        "raft_port": 7200 + n,
        "edge_port": 7300 + n,
        "app_port": 7400 + 10 * n,
        "role": role,
        **extra,
    }


def valid_data() -> dict[str, Any]:
    """A small valid cluster: m1..m3 active voters, m4 spare, two slots (app ranges 74n0-74n1)."""
    return {
        "cluster": "test",
        "base_domain": "example.test",
        "secrets": {"raft_password": "literal-raft-password", "api_token": "literal-token"},
        "servers": [
            server("m1", 1, domain="rack-a"),
            server("m2", 2, domain="rack-b"),
            server("m3", 3),
            server("m4", 4, "spare"),
        ],
        "voters": ["m1", "m2", "m3"],
        "slots": [
            {"name": "s1", "owner": "m1", "tenants": ["acme", "globex"]},
            {"name": "s2", "owner": "m2", "tenants": ["initech"]},
        ],
    }


def _tokens(path: str) -> list[str | int]:
    return [
        int(t[1:-1]) if t.startswith("[") else t for t in re.findall(r"\[\d+\]|[^.\[\]]+", path)
    ]


def with_changes(changes: Mapping[str, object]) -> dict[str, Any]:
    """valid_data() with each "key.path[i]" set to a value, or removed when the value is DELETE."""
    data = valid_data()
    for path, value in changes.items():
        *parents, last = _tokens(path)
        node: Any = data
        for token in parents:
            node = node.setdefault(token, {}) if isinstance(token, str) else node[token]
        if value is DELETE:
            del node[last]
        elif isinstance(last, int) and last == len(node):
            node.append(value)
        else:
            node[last] = value
    return data


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    for name, text in SECRET_FILES.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def errors_of(data: object, base_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir, ENV)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


def load(data: dict[str, Any], base_dir: Path) -> ClusterConfig:
    return parse_config(data, base_dir, ENV)


P = pytest.param

# Each row changes one key of valid_data() (DELETE removes it) and expects an error line
# "<that key>: <message...>". Secret files live in the `secret_dir` fixture, variables in ENV.
ONE_KEY_CASES: list[tuple[str, object, str]] = [
    # ---- unknown and missing keys
    ("colour", "red", "unknown key"),
    ("servers[1].zone", "a", "unknown key"),
    ("slots[0].weight", 2, "unknown key"),
    ("timing.tick", 0.1, "unknown key"),
    ("secrets.password", "x", "unknown key"),
    ("cluster", DELETE, "required key is missing"),
    ("base_domain", DELETE, "required key is missing"),
    ("servers[0].host", DELETE, "required key is missing"),
    ("servers[0].role", DELETE, "required key is missing"),
    ("slots[1].owner", DELETE, "required key is missing"),
    ("secrets", DELETE, "required key is missing"),
    ("voters", DELETE, "required key is missing"),
    # ---- wrong types: strict, so no string-to-number or bool-to-number coercion
    ("servers[0].agent_port", "abc", "Input should be a valid integer, got 'abc'"),
    ("servers[0].agent_port", "7101", "Input should be a valid integer, got '7101'"),
    ("servers[0].agent_port", 7101.5, "Input should be a valid integer"),
    ("servers[0].agent_port", True, "Input should be a valid integer"),
    ("servers[0].raft_port", 0, "Input should be greater than or equal to 1"),
    ("servers[0].edge_port", 65536, "Input should be less than or equal to 65535"),
    ("servers[0].app_port", None, "Input should be a valid integer, got None"),
    ("servers[0].role", "primary", "Input should be 'active' or 'spare'"),
    ("cluster", 5, "Input should be a valid string, got 5"),
    ("slots[0].tenants[1]", False, "Input should be a valid string (YAML reads unquoted yes/no"),
    ("servers", "m1", "Input should be a valid tuple"),
    ("slots[0].tenants", "acme", "Input should be a valid tuple"),
    ("secrets", ["x"], "Input should be a valid dictionary"),
    ("timing", 1, "Input should be a valid dictionary"),
    ("timing.tick_s", "0.1", "Input should be a valid number"),
    ("timing.tick_s", float("inf"), "Input should be a finite number"),
    ("timing.lease_s", -2.0, "Input should be greater than 0"),
    ("data_dir", 5, "must be a non-empty path"),
    ("data_dir", "", "must be a non-empty path"),
    # ---- names, tenants, failure domains, hosts
    ("cluster", "Demo", "'Demo' is not a valid name"),
    ("cluster", "1demo", "'1demo' is not a valid name"),
    ("cluster", "a" * 33, f"'{'a' * 33}' is not a valid name"),
    ("servers[1].name", "m_2", "'m_2' is not a valid name"),
    ("slots[0].name", "S1", "'S1' is not a valid name"),
    ("slots[0].owner", "M1", "'M1' is not a valid name"),
    ("voters[1]", "M2", "'M2' is not a valid name"),
    ("slots[0].tenants[0]", "Acme", "'Acme' is not a valid tenant"),
    ("slots[0].tenants[0]", "-acme", "'-acme' is not a valid tenant"),
    ("slots[0].tenants[0]", "acme-", "'acme-' is not a valid tenant"),
    ("slots[0].tenants[0]", "a_b", "'a_b' is not a valid tenant"),
    ("slots[0].tenants[0]", "a" * 64, f"'{'a' * 64}' is not a valid tenant"),
    ("servers[0].domain", "Rack-A", "'Rack-A' is not a valid domain label"),
    ("servers[0].domain", "-rack", "'-rack' is not a valid domain label"),
    ("servers[0].domain", "r" * 64, f"'{'r' * 64}' is not a valid domain label"),
    ("servers[0].host", "bad host", "'bad host' is neither an IP address nor a valid hostname"),
    ("servers[0].host", "-h.example", "'-h.example' is neither an IP address nor"),
    ("servers[0].host", "300.1.1.1", "'300.1.1.1' is neither an IP address nor"),
    ("servers[0].host", "", "'' is neither an IP address nor"),
    ("base_domain", "exa mple.test", "'exa mple.test' is not a valid DNS name"),
    ("base_domain", "example..test", "'example..test' is not a valid DNS name"),
    # ---- at least one of each, no duplicates
    ("servers", [], "need at least one server"),
    ("slots", [], "need at least one slot"),
    ("slots[1].tenants", [], "need at least one tenant"),
    ("servers[1].name", "m1", "duplicate server name 'm1' (also servers[0].name)"),
    ("slots[1].name", "s1", "duplicate slot name 's1' (also slots[0].name)"),
    ("slots[0].tenants[1]", "acme", "duplicate tenant 'acme'"),
    ("slots[1].tenants[0]", "acme", "tenant 'acme' is in two slots: slots[0] ('s1') and slots[1]"),
    # ---- voters
    ("voters", [], "need 3 or 5 voters, got 0"),
    ("voters", ["m1"], "need 3 or 5 voters, got 1"),
    ("voters", ["m1", "m2", "m3", "m4"], "need 3 or 5 voters, got 4"),
    ("voters[2]", "m9", "'m9' is not a server"),
    ("voters[2]", "m1", "duplicate voter 'm1' (also voters[0])"),
    # ---- slot owners
    ("slots[0].owner", "m9", "'m9' is not a server"),
    ("slots[1].owner", "m4", "'m4' is a spare; only active servers own slots"),
    # ---- ports on one host (the other key path is in the message)
    (
        "servers[2].raft_port",
        7101,
        "port 7101 on 127.0.0.1 is already used by servers[0].agent_port",
    ),
    (
        "servers[1].edge_port",
        7102,
        "port 7102 on 127.0.0.1 is already used by servers[1].agent_port",
    ),
    (
        "servers[3].agent_port",
        7421,
        "port 7421 on 127.0.0.1 is already used by servers[1].app_port",
    ),
    (
        "servers[1].app_port",
        7411,
        "port 7411 (in its app port range, one port per slot) on 127.0.0.1",
    ),
    (
        "servers[3].app_port",
        65535,
        "app port range 65535..65536 (one port per slot) goes past 65535",
    ),
    # ---- timing invariants
    ("timing.probe_timeout_s", 0.2, "must be less than probe_interval_s (0.2), got 0.2"),
    ("timing.probe_interval_s", 0.8, "must be less than suspicion_s (0.8), got 0.8"),
    ("timing.lease_renew_s", 1.1, "must be at most half of lease_s (2.0), got 1.1"),
    ("timing.tick_s", 0.6, "must be at most lease_renew_s (0.4), got 0.6"),
    ("timing.suspicion_max_s", 0.5, "must be between suspicion_s (0.8) and suspicion_expire_s"),
    ("timing.lease_margin_s", 2.0, "must be less than lease_s (2.0), got 2.0"),
    ("timing.clock_drift", 0.5, "Input should be less than or equal to 0.1"),
    ("detection.min_observers", 1, "Input should be greater than or equal to 2"),
    ("detection.indirect_probes", -1, "Input should be greater than or equal to 0"),
    ("timing.raft_election_min_s", 1.2, "must be less than raft_election_max_s (1.2), got 1.2"),
    ("timing.leader_fallback_s", 2.0, "must be less than lease_s (2.0), got 2.0"),
    # ---- secrets given literally
    ("secrets.api_token", "", "is empty"),
    ("secrets.raft_password", "1234567", "must be at least 8 characters long, got 7"),
    ("secrets.raft_password", 12345678, "must be a string"),
    ("secrets.raft_password", DELETE, "give exactly one of raft_password, raft_password_file,"),
]

# Rows that change several keys, or whose error is reported at another key: (changes, line).
MANY_KEY_CASES = [
    P(
        {"servers[0].edge_port": 7411},
        "servers[0].app_port: port 7411 (in its app port range, one port per slot) on 127.0.0.1"
        " is already used by servers[0].edge_port",
        id="app-range-covers-own-port",
    ),
    P(
        {
            "servers[0].host": "localhost",
            "servers[1].host": "LocalHost",
            "servers[1].raft_port": 7101,
        },
        "servers[1].raft_port: port 7101 on localhost is already used by servers[0].agent_port",
        id="host-names-compare-lower-case",
    ),
    P(
        {"secrets.raft_password_env": "RAFT_PW"},
        "secrets.raft_password: give exactly one of raft_password, raft_password_file,"
        " raft_password_env (got raft_password, raft_password_env)",
        id="secret-literal-and-env",
    ),
    P(
        {"secrets.api_token": DELETE, "secrets.api_token_file": "t", "secrets.api_token_env": "T"},
        "secrets.api_token: give exactly one of api_token, api_token_file, api_token_env"
        " (got api_token_file, api_token_env)",
        id="secret-file-and-env",
    ),
    P(
        {"secrets.raft_password": DELETE, "secrets.raft_password_file": "nope.txt"},
        "secrets.raft_password: cannot read raft_password_file '",
        id="secret-file-missing",
    ),
    P(
        {"secrets.api_token": DELETE, "secrets.api_token_env": "NOT_SET"},
        "secrets.api_token: api_token_env names 'NOT_SET', which is not set",
        id="secret-env-unset",
    ),
    P(
        {"secrets.api_token": DELETE, "secrets.api_token_file": "empty.txt"},
        "secrets.api_token: is empty",
        id="secret-file-empty",
    ),
    P(
        {"secrets.api_token": DELETE, "secrets.api_token_env": "EMPTY"},
        "secrets.api_token: is empty",
        id="secret-env-empty",
    ),
    P(
        {"secrets.raft_password": DELETE, "secrets.raft_password_file": "short.txt"},
        "secrets.raft_password: must be at least 8 characters long, got 7",
        id="raft-password-file-short",
    ),
    P(
        {"secrets.raft_password": DELETE, "secrets.raft_password_env": "SHORT"},
        "secrets.raft_password: must be at least 8 characters long, got 7",
        id="raft-password-env-short",
    ),
    P(
        {"secrets.raft_password": DELETE, "secrets.raft_password_file": 5},
        "secrets.raft_password_file: Input should be a valid string",
        id="secret-file-not-a-string",
    ),
    P(
        {"secrets.raft_password": DELETE, "secrets.raft_password_env": "1X"},
        "secrets.raft_password_env: '1X' is not a valid environment variable name",
        id="secret-env-bad-name",
    ),
    P(
        {"slots[0].database_url": "mysql://u:p@db/x"},
        "slots[0].database_url: must be a postgresql://user:password@host:port/database URL",
        id="database-url-not-postgres",
    ),
    P(
        {"slots[0].database_url_env": "NOT_SET"},
        "slots[0].database_url: database_url_env names 'NOT_SET', which is not set",
        id="database-url-env-unset",
    ),
    P(
        {"slots[0].database_url": "postgresql://a@b/c", "slots[0].database_url_env": "DB_URL"},
        "slots[0].database_url: give exactly one of database_url, database_url_file,",
        id="database-url-twice",
    ),
    P(
        {"app.max_upload_mb": 0},
        "app.max_upload_mb: Input should be greater than or equal to 1",
        id="upload-limit-zero",
    ),
]


def assert_reported(errors: list[str], expected: str) -> None:
    assert any(line.startswith(expected) for line in errors), errors
    # Secret values never appear in messages.
    assert not any("literal-raft-password" in line or "literal-token" in line for line in errors)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [P(*case, id=f"{case[0]}={case[1]!r}"[:60]) for case in ONE_KEY_CASES],
)
def test_bad_value_is_reported_at_its_key(
    path: str, value: object, message: str, secret_dir: Path
) -> None:
    assert_reported(errors_of(with_changes({path: value}), secret_dir), f"{path}: {message}")


@pytest.mark.parametrize(("changes", "expected"), MANY_KEY_CASES)
def test_bad_combination_is_reported_at_its_key(
    changes: dict[str, object], expected: str, secret_dir: Path
) -> None:
    assert_reported(errors_of(with_changes(changes), secret_dir), expected)


@pytest.mark.parametrize("key", TIMING_KEYS)
def test_every_duration_must_be_positive(key: str, tmp_path: Path) -> None:
    errors = errors_of(with_changes({f"timing.{key}": 0}), tmp_path)
    assert f"timing.{key}: Input should be greater than 0, got 0" in errors


def test_all_field_errors_are_reported_together(tmp_path: Path) -> None:
    data = with_changes(
        {
            "cluster": "Bad",
            "servers[0].agent_port": "abc",
            "slots[0].tenants[0]": "Acme",
            "timing.probe_timeout_s": 0.9,
            "secrets.raft_password": "short",
        }
    )
    errors = errors_of(data, tmp_path)
    assert [line.split(":")[0] for line in errors] == [
        "cluster",
        "secrets.raft_password",
        "servers[0].agent_port",
        "slots[0].tenants[0]",
        "timing.probe_timeout_s",
    ]


def test_all_cross_field_errors_are_reported_together(tmp_path: Path) -> None:
    data = with_changes(
        {"voters": ["m1", "m2", "m9"], "slots[1].owner": "m4", "servers[2].raft_port": 7101}
    )
    assert errors_of(data, tmp_path) == [
        "voters[2]: 'm9' is not a server",
        "slots[1].owner: 'm4' is a spare; only active servers own slots",
        "servers[2].raft_port: port 7101 on 127.0.0.1 is already used by servers[0].agent_port",
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        P(["a"], "(top level): expected a mapping of keys, got a list", id="list"),
        P("cluster", "(top level): expected a mapping of keys, got a str", id="scalar"),
        P(None, "(top level): expected a mapping of keys, got an empty file", id="empty"),
    ],
)
def test_top_level_must_be_a_mapping(data: object, expected: str, tmp_path: Path) -> None:
    assert errors_of(data, tmp_path) == [expected]


def test_non_string_key_is_an_error(tmp_path: Path) -> None:
    data = valid_data()
    data["servers"][0][True] = 1  # what YAML makes of an unquoted `on:` or `yes:`
    errors = errors_of(data, tmp_path)
    assert any(
        line.startswith("servers[0]: key True is not a string (YAML reads") for line in errors
    )


def test_direct_construction_enforces_the_rules_too() -> None:
    with pytest.raises(ValidationError, match="need 3 or 5 voters, got 4"):
        ClusterConfig.model_validate(with_changes({"voters": ["m1", "m2", "m3", "m4"]}))
    with pytest.raises(ValidationError, match="probe_timeout_s: must be less than"):
        TimingConfig(probe_timeout_s=1.0)


# ---------------------------------------------------------------- valid configurations


def test_valid_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load(with_changes({"base_domain": "Example.TEST"}), tmp_path)
    assert config.cluster == "test"
    assert config.base_domain == "example.test"
    assert config.data_dir == tmp_path.resolve() / "var"
    assert config.timing == TimingConfig()
    assert config.server("m3").domain == "default"
    assert config.servers[0].domain == "rack-a"
    assert config.secrets.raft_password.get_secret_value() == "literal-raft-password"
    assert config.secrets.raft_password_file is None
    assert config.secrets.api_token_env is None


@pytest.mark.parametrize(
    ("data_dir", "expected"),
    [
        P("state", "{base}/state", id="relative"),
        P("../state", "{parent}/state", id="dot-dot"),
        P("/srv/moonwatch", "/srv/moonwatch", id="absolute"),
    ],
)
def test_data_dir_is_resolved_against_the_config_directory(
    data_dir: str, expected: str, tmp_path: Path
) -> None:
    base = tmp_path.resolve() / "etc"
    config = load(with_changes({"data_dir": data_dir}), base)
    assert config.data_dir == Path(expected.format(base=base, parent=base.parent))
    assert config.data_dir.is_absolute()


def test_secrets_from_files_and_env(secret_dir: Path) -> None:
    secrets = {"raft_password_file": "raft.txt", "api_token_env": "TOKEN"}
    config = load(with_changes({"secrets": secrets}), secret_dir)
    assert isinstance(config.secrets.raft_password, SecretStr)
    assert config.secrets.raft_password.get_secret_value() == "raft-password-from-file"
    assert config.secrets.api_token.get_secret_value() == "token-from-env"
    assert config.secrets.raft_password_file == "raft.txt"
    assert config.secrets.api_token_env == "TOKEN"
    assert "from-file" not in repr(config) and "from-env" not in repr(config)


def test_a_slot_database_url_is_a_secret_from_the_environment(tmp_path: Path) -> None:
    config = load(with_changes({"slots[0].database_url_env": "DB_URL"}), tmp_path)
    url = config.slots[0].database_url
    assert url is not None and url.get_secret_value() == ENV["DB_URL"]
    assert config.slots[1].database_url is None
    assert "db-password-from-env" not in repr(config)
    assert config.app.max_upload_mb == 25


def test_secret_file_path_may_be_absolute(
    secret_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    secrets = {"raft_password_file": str(secret_dir / "raft.txt"), "api_token": "t"}
    config = load(with_changes({"secrets": secrets}), elsewhere)
    assert config.secrets.raft_password.get_secret_value() == "raft-password-from-file"


@pytest.mark.parametrize(
    "changes",
    [
        P(
            {"servers[1].host": "10.0.0.2", "servers[1].agent_port": 7101},
            id="other-host-reuses-port",
        ),
        P({"slots[1].owner": "m1"}, id="two-slots-one-owner"),
        P(
            {"voters": ["m1", "m2", "m3", "m4", "m5"], "servers[4]": server("m5", 5)},
            id="five-voters",
        ),
        P({"servers[3].role": "active", "slots[1].owner": "m4"}, id="active-non-voter-owns"),
        P(
            {"servers[0].host": "::1", "servers[1].host": "db-1.example.test"},
            id="ipv6-and-hostname",
        ),
        P({"timing.tick_s": 0.5, "timing.lease_renew_s": 0.5}, id="tick-equals-renew"),
        P({"servers[3].app_port": 65534}, id="app-range-ends-at-65535"),
    ],
)
def test_valid_variants_load(changes: dict[str, object], tmp_path: Path) -> None:
    load(with_changes(changes), tmp_path)


def test_server_addresses(tmp_path: Path) -> None:
    config = load(with_changes({"servers[0].host": "0:0::1"}), tmp_path)
    ipv6, ipv4 = config.servers[0], config.servers[1]
    assert ipv6.host == "::1"
    assert ipv6.raft_address == "::1:7201"
    assert ipv6.agent_url == "http://[::1]:7101"
    assert ipv4.raft_address == "127.0.0.1:7202"
    assert ipv4.agent_url == "http://127.0.0.1:7102"
    assert ipv4.edge_url == "http://127.0.0.1:7302"


def test_lookups(tmp_path: Path) -> None:
    config = load(valid_data(), tmp_path)
    assert config.server("m2").agent_port == 7102
    assert config.slot("s2").owner == "m2"
    assert config.slot_index("s2") == 1
    assert config.app_port("m2", "s1") == 7420
    assert config.app_port("m2", "s2") == 7421
    assert config.tenant_slots() == {"acme": "s1", "globex": "s1", "initech": "s2"}
    assert config.is_voter("m3")
    assert not config.is_voter("m4")
    for lookup in (config.server, config.slot, config.slot_index):
        with pytest.raises(KeyError):
            lookup("nope")
    with pytest.raises(KeyError):
        config.app_port("m1", "nope")


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load(valid_data(), tmp_path)
    with pytest.raises(ValidationError):
        config.cluster = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.servers[0].agent_port = 1  # type: ignore[misc]


def test_digest_ignores_secrets_and_data_dir_only(tmp_path: Path) -> None:
    digest = load(valid_data(), tmp_path).digest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert load(valid_data(), tmp_path / "elsewhere").digest() == digest
    same = {"secrets": {"raft_password": "another-password", "api_token": "x"}, "data_dir": "/x"}
    assert load(with_changes(same), tmp_path).digest() == digest
    for changed in ({"timing.tick_s": 0.2}, {"servers[3].domain": "rack-z"}, {"voters[2]": "m4"}):
        assert load(with_changes(changed), tmp_path).digest() != digest, changed


# ---------------------------------------------------------------- files and YAML


def write(tmp_path: Path, text: str, name: str = "cluster.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    return caught.value.errors


def test_repository_cluster_yml_loads() -> None:
    config = load_config(REPO_CLUSTER_YML, env={})
    assert config.cluster == "demo"
    assert config.base_domain == "localhost"
    assert config.data_dir == REPO_CLUSTER_YML.parent / "var"
    assert [s.name for s in config.servers] == ["m1", "m2", "m3", "m4", "m5"]
    assert [s.role for s in config.servers] == ["active"] * 3 + ["spare"] * 2
    assert [s.domain for s in config.servers] == ["rack-a", "rack-b", "rack-c", "rack-a", "rack-b"]
    assert [s.app_port for s in config.servers] == [7410, 7420, 7430, 7440, 7450]
    assert config.voters == ("m1", "m2", "m3")
    assert config.tenant_slots()["wayne"] == "s3"
    assert config.timing == TimingConfig()
    assert config.secrets.api_token.get_secret_value() == "demo-operator-token-change-me"


def test_load_config_reads_env_from_the_process_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOONWATCH_TEST_TOKEN", "token-from-process")
    data = with_changes(
        {"secrets.api_token": DELETE, "secrets.api_token_env": "MOONWATCH_TEST_TOKEN"}
    )
    config = load_config(write(tmp_path, yaml.safe_dump(data)))
    assert config.secrets.api_token.get_secret_value() == "token-from-process"


def test_relative_paths_are_taken_from_the_file_not_the_cwd(
    secret_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    data = with_changes({"secrets.raft_password": DELETE, "secrets.raft_password_file": "raft.txt"})
    config = load_config(write(secret_dir, yaml.safe_dump(data)), env={})
    assert config.data_dir == secret_dir.resolve() / "var"
    assert config.secrets.raft_password.get_secret_value() == "raft-password-from-file"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        P(
            "cluster: a\ncluster: b\n",
            "line 2, column 1: duplicate key 'cluster' (first given on line 1)",
            id="dup-top",
        ),
        P(
            "secrets:\n  api_token: a\n  raft_password: b\n  api_token: c\n",
            "line 4, column 3: duplicate key 'api_token' (first given on line 2)",
            id="dup-nested",
        ),
        P("servers: [1\nvoters: 2\n", "line 2, column", id="syntax"),
        P(
            "a: b: c\n",
            "line 1, column 5: mapping values are not allowed here",
            id="syntax-mapping",
        ),
        P("- 1\n- 2\n", "(top level): expected a mapping of keys, got a list", id="list"),
        P("", "(top level): expected a mapping of keys, got an empty file", id="empty"),
        P(
            "# only a comment\n",
            "(top level): expected a mapping of keys, got an empty file",
            id="comment",
        ),
    ],
)
def test_yaml_errors(text: str, expected: str, tmp_path: Path) -> None:
    errors = load_errors(write(tmp_path, text))
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = REPO_CLUSTER_YML.read_text(encoding="utf-8")
    text = text.replace("  - {name: m2,", "  - {<<: {name: x, domain: rack-z}, name: m2,", 1)
    assert "<<" in text
    assert load_config(write(tmp_path, text), env={}).server("m2").domain == "rack-b"


def test_unreadable_files(tmp_path: Path) -> None:
    assert load_errors(tmp_path / "missing.yml") == [
        "cannot read the file: No such file or directory"
    ]
    assert load_errors(tmp_path) == ["cannot read the file: Is a directory"]
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"cluster: \xff\xfe\n")
    assert load_errors(binary) == ["cannot read the file: it is not UTF-8 text"]


# ---------------------------------------------------------------- check-config


def run_check(path: Path | str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = check_config_main(str(path), out, err)
    return code, out.getvalue(), err.getvalue()


def test_check_config_accepts_the_repository_cluster_yml() -> None:
    assert run_check(REPO_CLUSTER_YML) == (0, "ok\n", "")


@pytest.mark.parametrize(
    ("replacements", "expected"),
    [
        P(
            {"raft_port: 7203": "raft_port: 7101"},
            [
                "servers[2].raft_port: port 7101 on 127.0.0.1"
                " is already used by servers[0].agent_port"
            ],
            id="port-collision",
        ),
        P(
            {"\ncluster: demo\n": "\ncluster: Demo\n", "voters: [m1, m2, m3]": "voters: [m1, m2]"},
            [
                "cluster: 'Demo' is not a valid name: use 1-32 characters of a-z, 0-9 and '-',"
                " starting with a letter",
                "voters: need 3 or 5 voters, got 2",
            ],
            id="two-errors",
        ),
    ],
)
def test_check_config_reports_every_error_with_the_file_name(
    replacements: dict[str, str], expected: list[str], tmp_path: Path
) -> None:
    text = REPO_CLUSTER_YML.read_text(encoding="utf-8")
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    path = write(tmp_path, text, "bad.yml")
    code, out, err = run_check(path)
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"{path}: {line}" for line in expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        P(None, "cannot read the file: No such file or directory", id="missing"),
        P("cluster: [\n", "line 2, column 1: ", id="syntax"),
        P(
            "cluster: a\ncluster: b\n",
            "line 2, column 1: duplicate key 'cluster'",
            id="duplicate-key",
        ),
    ],
)
def test_check_config_file_errors(text: str | None, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "cluster.yml" if text is None else write(tmp_path, text)
    code, out, err = run_check(path)
    assert (code, out) == (2, "")
    assert err.startswith(f"{path}: {expected}"), err
