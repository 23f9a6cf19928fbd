"""The `backups` block of the cluster configuration: when and where slots are backed up."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator

_AT = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
MAX_KEEP_DAYS = 3650


class BackupsConfig(BaseModel):
    """Daily backups of every slot a server serves, kept `keep_days` days."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: Annotated[bool, Strict()] = True
    # Where backups go; a relative path is taken from the config file's directory.
    # None: <data_dir>/backups.
    dir: Path | None = None
    keep_days: Annotated[int, Strict()] = Field(default=14, ge=1, le=MAX_KEEP_DAYS)
    # The time of day (UTC, HH:MM) of the daily backup.
    at: str = "03:00"
    # A backup (with its check) that takes longer is killed and counted as failed.
    timeout_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)

    @field_validator("dir", mode="before")
    @classmethod
    def _dir(cls, value: object) -> object:
        if value is not None and (not isinstance(value, str | Path) or not str(value)):
            raise ValueError("must be a non-empty path (or null for <data_dir>/backups)")
        return value

    @field_validator("at", mode="before")
    @classmethod
    def _at(cls, value: object) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                f'write the time in quotes, e.g. at: "03:00" (YAML reads an unquoted HH:MM '
                f"as a number: got {value})"
            )
        if not isinstance(value, str) or _AT.match(value) is None:
            raise ValueError(f"must be a UTC time of day as HH:MM (00:00-23:59), got {value!r}")
        return value

    @property
    def minute_of_day(self) -> int:
        """`at` as minutes after midnight UTC."""
        hours, minutes = self.at.split(":")
        return int(hours) * 60 + int(minutes)
