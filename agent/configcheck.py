"""`moonwatch check-config FILE`: validate a cluster config file and report every problem."""

from __future__ import annotations

from typing import TextIO

from agent.config import ConfigError, load_config

EXIT_OK = 0
EXIT_INVALID = 2


def check_config_main(path: str, out: TextIO, err: TextIO) -> int:
    """Print "ok" and return 0, or print each error prefixed by `path` and return 2."""
    try:
        load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"{path}: {line}", file=err)
        return EXIT_INVALID
    print("ok", file=out)
    return EXIT_OK
