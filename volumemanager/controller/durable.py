"""The controller's record files (provisioned volumes, attachments, snapshots), durably.

Each record is the only trace on this host of something that lives in the storage system, so
it is written the one crash-safe way: a temporary file in the same directory, fsync'd, renamed
over the name, then the directory fsync'd (the rename survives a power loss only then). A crash
leaves the old record or the new one, never half of one; a leftover ``*.tmp`` is a write that
never got renamed, and the old record stands.
"""

from __future__ import annotations

import os

TMP_SUFFIX = ".tmp"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: str, data: bytes) -> None:
    """Replace ``path`` (mode 0600) with ``data``, as above. Raises ``OSError``."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = path + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(directory)


def remove_durably(path: str) -> None:
    """Remove ``path`` (gone already is fine) and make the removal survive a power loss."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(path))
