"""
``syncfs(2)``: make every file of one file system durable with one call.

Python's :mod:`os` has no ``syncfs``; it is called through :mod:`ctypes`,
which lets other threads run meanwhile. Only Linux has it, and only from
5.8 does it report write errors: before, it said success even when the
disk had refused the data, which would make a commit that lost its
message look durable. So :func:`load_syncfs` offers it from 5.8 on, and
nowhere else.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from mailframe.components import SettingError

__all__ = [
    "MINIMUM_RELEASE", "SYNC_FILE", "SYNC_FILESYSTEM", "check_sync", "choose_syncfs", "load_syncfs",
]

#: Each file is ``fsync``\\ ed on its own: the default.
SYNC_FILE = "file"
#: Files written together share one ``syncfs`` of their file system.
SYNC_FILESYSTEM = "filesystem"

#: The earliest Linux whose ``syncfs`` reports write-back errors.
MINIMUM_RELEASE = (5, 8)


def _release(text: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def load_syncfs(
    system: str = sys.platform, release: str | None = None
) -> tuple[Callable[[int], None] | None, str]:
    """
    The ``syncfs`` of this system, as a function of an open file
    descriptor on the file system that raises :class:`OSError` on failure;
    or ``None``, with the reason.
    """
    if system != "linux":
        return None, f"syncfs is a Linux call, and this system is {system}"
    release = platform.release() if release is None else release
    version = _release(release)
    if version is None or version < MINIMUM_RELEASE:
        return None, (
            f"Linux {release} does not report write errors from syncfs;"
            f" it needs {MINIMUM_RELEASE[0]}.{MINIMUM_RELEASE[1]} or later"
        )
    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None, "the C library has no syncfs"
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if call(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs: {os.strerror(code)}")

    return syncfs, ""


def choose_syncfs(sync: str) -> Callable[[int], None] | None:
    """
    The ``syncfs`` that a *sync* setting asks for: ``None`` for
    :data:`SYNC_FILE`.

    :raises ValueError: for a *sync* that is unknown or, for
        :data:`SYNC_FILESYSTEM`, that this system cannot do safely.
    """
    if sync == SYNC_FILE:
        return None
    if sync != SYNC_FILESYSTEM:
        raise ValueError(f"sync is {SYNC_FILE!r} or {SYNC_FILESYSTEM!r}, not {sync!r}")
    syncfs, why = load_syncfs()
    if syncfs is None:
        raise ValueError(f"sync = {sync!r} cannot be used here: {why}")
    return syncfs


def check_sync(settings: Mapping[str, Any]) -> None:
    """
    A plugin's ``validate``: refuse a ``sync`` setting of
    :data:`SYNC_FILESYSTEM` where ``syncfs`` cannot be trusted.
    """
    if settings["sync"] == SYNC_FILESYSTEM:
        syncfs, why = load_syncfs()
        if syncfs is None:
            raise SettingError("sync", f"{SYNC_FILESYSTEM!r} cannot be used here: {why}")
