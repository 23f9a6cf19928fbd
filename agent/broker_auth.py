"""Who may use a mosquitto broker: its password file (the PBKDF2-SHA512 lines that
mosquitto_passwd writes) and an ACL giving the agents' user `<prefix>/#`."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pwd
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# mosquitto 2.0's own format: $7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512 hash>.
PBKDF2_ITERATIONS: Final = 101
SALT_BYTES: Final = 12
# When started as root, mosquitto drops to this user before it reads these files.
BROKER_USER: Final = "mosquitto"


def password_line(username: str, password: str, salt: bytes | None = None) -> str:
    """One line of a mosquitto password file for `username` (no newline)."""
    if ":" in username or "\n" in username:
        raise ValueError("a broker user name cannot hold ':' or a newline")
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"{username}:$7${PBKDF2_ITERATIONS}${encoded[0]}${encoded[1]}"


def acl_text(username: str, topic_prefix: str) -> str:
    """`username` may read and write everything under `topic_prefix`, and nothing else."""
    return f"user {username}\ntopic readwrite {topic_prefix}/#\n"


@dataclass(frozen=True, slots=True)
class BrokerAuth:
    password_file: Path
    acl_file: Path

    def config_lines(self) -> list[str]:
        """The mosquitto.conf lines that use these files and turn anonymous access off."""
        return [
            "allow_anonymous false",
            f"password_file {self.password_file}",
            f"acl_file {self.acl_file}",
        ]


def write_broker_auth(
    directory: Path, username: str, password: str, topic_prefix: str, *, stem: str = "mosquitto"
) -> BrokerAuth:
    """Write `<stem>.passwd` and `<stem>.acl` into `directory` (mode 0600). Run as root, they
    are handed to the mosquitto user, which must also be able to reach `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = BrokerAuth(directory / f"{stem}.passwd", directory / f"{stem}.acl")
    _write_private(auth.password_file, password_line(username, password) + "\n")
    _write_private(auth.acl_file, acl_text(username, topic_prefix))
    return auth


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError, OSError):  # no such user: mosquitto keeps root
            entry = pwd.getpwnam(BROKER_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)
