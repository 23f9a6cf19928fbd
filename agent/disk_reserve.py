"""Space held on disk for the Raft journal before the disk can fill up.

pysyncobj keeps its journal in a memory-mapped file that it grows by truncating it longer.
On a full file system the new pages have no blocks behind them, and the first write into one
kills the whole agent with SIGBUS, before it could drain itself or even log why. So the agent
allocates (without changing the file's size) the blocks the journal will grow into next: up
to twice its size, at least `minimum_ahead` bytes beyond it. When even that fails for lack of
space, the disk is as good as full, and the caller says so in time to drain."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from functools import cache
from pathlib import Path
from typing import Any, Final

FALLOC_FL_KEEP_SIZE: Final = 0x01
MINIMUM_AHEAD: Final = 4 * 1024 * 1024


class ReserveUnsupported(OSError):
    """This platform or file system cannot allocate space ahead of a file's end."""


@cache
def _fallocate() -> Any:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name, use_errno=True) if name else None
    function = getattr(libc, "fallocate", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    function.restype = ctypes.c_int
    return function


def reserve_ahead(path: Path, minimum_ahead: int = MINIMUM_AHEAD) -> int:
    """Allocate blocks for `path` from its start to max(2 x size, size + minimum_ahead), keeping
    its size. Returns the bytes now held; 0 when the file does not exist (yet). Raises OSError
    (ENOSPC when the disk is full) or ReserveUnsupported."""
    fallocate = _fallocate()
    if fallocate is None:
        raise ReserveUnsupported(errno.EOPNOTSUPP, "fallocate is not available here")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        target = max(2 * size, size + minimum_ahead)
        if fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, target) != 0:
            code = ctypes.get_errno()
            if code in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise ReserveUnsupported(code, f"{path}: {os.strerror(code)}")
            raise OSError(code, f"cannot hold {target} bytes for {path}: {os.strerror(code)}")
        return target
    finally:
        os.close(fd)
