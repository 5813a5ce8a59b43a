"""The controller's record files (provisioned volumes, attachments, snapshots), durably.

Each record is the only trace on this host of something that lives in the storage system, so
it is written the one crash-safe way: a temporary file in the same directory, fsync'd, renamed
over the name, then the directory fsync'd (the rename survives a power loss only then). A crash
leaves the old record or the new one, never half of one; a leftover ``*.tmp`` is a write that
never got renamed, and the old record stands.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, TypeVar

TMP_SUFFIX = ".tmp"

R = TypeVar("R")
# What reading a record may raise for a file that is not one of ours (or cannot be read).
UNREADABLE = (OSError, ValueError, KeyError, TypeError)


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


def load_records(
    directory: str,
    suffix: str,
    parse: Callable[[str], tuple[str, R]],
    misnamed: Callable[[str], str],
    what: str,
    log: logging.Logger,
) -> tuple[dict[str, R], dict[str, str]]:
    """Read every ``*<suffix>`` record of ``directory`` (created 0700 if missing), at start.

    ``parse(path)`` returns the record's name and the record, or raises one of ``UNREADABLE``;
    a record whose name + ``suffix`` is not its file name is unreadable too, with the message
    ``misnamed(name)``. An unreadable record is logged (``"<what> <path> cannot be read: ..."``
    on the store's own ``log``) and returned in the errors (file name -> message), but kept on
    disk, never deleted: it may be the only trace of something in the storage system. A
    leftover ``*.tmp`` is a write interrupted before its rename, so it goes and the old record
    stands; any other file is passed over. Returns (name -> record, file name -> error)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    found: dict[str, R] = {}
    errors: dict[str, str] = {}
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if entry.endswith(TMP_SUFFIX):
            os.unlink(path)
            continue
        if not entry.endswith(suffix):
            continue
        try:
            name, record = parse(path)
            if name + suffix != entry:
                raise ValueError(misnamed(name))
        except UNREADABLE as e:
            errors[entry] = str(e)
            log.error("%s %s cannot be read: %s", what, path, e)
            continue
        found[name] = record
    return found, errors
