"""Small file helpers shared by the stores and the transports that write files."""

from __future__ import annotations

import os

__all__ = ["unlink_if_there", "write_all"]


def write_all(fd: int, data: bytes) -> None:
    """Write all of *data* to *fd*: ``write`` may take less than it is given."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unlink_if_there(path: str) -> None:
    """Remove the file at *path*, if there is one."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
