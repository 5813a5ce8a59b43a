"""Filesystem helpers shared by the built-in plugins."""

from __future__ import annotations

import errno
import logging
import os
import stat

from mount_utils.holders import Holder, describe_holders, find_holders
from operation_executor.errors import UncertainError

log = logging.getLogger(__name__)


class TreeRemovalRefused(OSError):
    """The tree holds something we must not delete (a mount point, another filesystem)."""


def remove_tree_one_filesystem(path: str) -> None:
    """Delete ``path`` and everything below it, like ``rm -rf --one-file-system``, but refuse
    to enter a directory on another filesystem or a mount point. Symlinks are removed, never
    followed.

    A bind mount of a directory of the *same* filesystem (``mount --bind /srv/data
    <emptyDir>/sub``) has the same ``st_dev`` and fools ``os.path.ismount``: deleting through
    it deleted the host's data. So: first every mount at or below ``path`` in mountinfo
    refuses the whole removal before anything is deleted, and then every directory entered is
    checked by its mount id (``/proc/self/fdinfo``), which also catches a mount made meanwhile.

    Used only for an emptyDir's own scratch data, which by definition dies with the pod;
    never for a directory that holds another volume.
    """
    try:
        root_st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(root_st.st_mode):
        os.unlink(path)
        return
    _refuse_mounts_below(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        mnt = _mount_id(fd)
    finally:
        os.close(fd)
    _remove_dir_contents(path, root_st.st_dev, mnt)
    os.rmdir(path)


def _refuse_mounts_below(path: str) -> None:
    """TreeRemovalRefused naming the first mount at or below ``path`` (by its real path)."""
    from mount_utils.mountinfo import MountTable

    real = os.path.realpath(path)
    for candidate in dict.fromkeys((os.path.abspath(path), real)):
        below = MountTable.read().under(candidate)
        if below:
            raise TreeRemovalRefused(errno.EBUSY, "refusing to delete a tree with a mount in it (nothing deleted)",
                                     below[0].mount_point)


def _mount_id(fd: int) -> int | None:
    """The mount id of an open fd (``mnt_id`` in /proc/self/fdinfo), None if unreadable."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _remove_dir_contents(path: str, dev: int, mnt: int | None) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if mnt is not None and _mount_id(fd) != mnt:
            raise TreeRemovalRefused(errno.EBUSY, "refusing to delete a mount point or another filesystem", path)
        for entry in os.scandir(fd):
            st = os.lstat(entry.name, dir_fd=fd)
            if stat.S_ISDIR(st.st_mode):
                child = os.path.join(path, entry.name)
                if st.st_dev != dev or os.path.ismount(child):
                    raise TreeRemovalRefused(
                        errno.EBUSY, "refusing to delete a mount point or another filesystem", child
                    )
                _remove_dir_contents(child, dev, mnt)
                os.rmdir(entry.name, dir_fd=fd)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)


def holders_of(path: str) -> tuple[Holder, ...]:
    """The processes holding ``path``; () when the scan itself fails (it only explains)."""
    try:
        return tuple(find_holders(path))
    except Exception as e:  # noqa: BLE001 - a failed scan must not hide the real error
        log.warning("could not look for processes using %s: %s", path, e)
        return ()


def is_busy(err: BaseException) -> bool:
    """An unmount or removal refused because the path is in use (EBUSY)."""
    return isinstance(err, OSError) and err.errno == errno.EBUSY


def teardown_error(path: str, err: BaseException, what: str) -> UncertainError:
    """The error for a failed tear-down of ``path``: a busy one (EBUSY) gets code ``BUSY`` and
    names the processes holding the path, so ``status``/``explain`` can show them; it stays
    uncertain, so the executor retries it with backoff (never a lazy unmount)."""
    if not is_busy(err):
        return UncertainError(f"{what}: {err}", code="UNMOUNT_FAILED")
    holders = holders_of(path)
    return UncertainError(busy_message(what, str(err), holders), code="BUSY", holders=holders)


def busy_message(what: str, reason: str, holders: tuple[Holder, ...]) -> str:
    if holders:
        return f"{what}: {reason}: held by {describe_holders(holders)}"
    return f"{what}: {reason} (no process found holding it; retrying)"
