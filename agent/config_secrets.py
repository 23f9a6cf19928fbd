"""How a secret of the configuration is given: literally, as `<name>_file` or `<name>_env`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr


def resolve_secret(
    name: str, literal: object, file: str | None, env_var: str | None, context: object
) -> str:
    """The secret's value from exactly one of its three forms; ValueError names the problem."""
    forms = ((name, literal), (f"{name}_file", file), (f"{name}_env", env_var))
    given = [key for key, value in forms if value is not None]
    if len(given) != 1:
        found = f"got {', '.join(given)}" if given else "got none"
        raise ValueError(f"give exactly one of {name}, {name}_file, {name}_env ({found})")
    base_dir, env = config_context(context)
    if file is not None:
        secret_path = base_dir / file
        try:
            return secret_path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"cannot read {name}_file {str(secret_path)!r}: {reason}") from None
    if env_var is not None:
        if env_var not in env:
            raise ValueError(f"{name}_env names {env_var!r}, which is not set")
        return env[env_var]
    if isinstance(literal, SecretStr):
        return literal.get_secret_value()
    if not isinstance(literal, str):
        raise ValueError("must be a string")
    return literal


def config_context(context: object) -> tuple[Path, Mapping[str, str]]:
    """The config file's directory and the environment, as given to `parse_config`."""
    if isinstance(context, dict):
        return Path(context["base_dir"]).absolute(), context["env"]
    return Path.cwd(), os.environ
