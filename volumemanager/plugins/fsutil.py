"""Filesystem helpers shared by the built-in plugins."""

from __future__ import annotations

import errno
import os
import stat


class TreeRemovalRefused(OSError):
    """The tree holds something we must not delete (a mount point, another filesystem)."""


def remove_tree_one_filesystem(path: str) -> None:
    """Delete ``path`` and everything below it, like ``rm -rf --one-file-system``, but refuse
    (before deleting anything below that point) to enter a directory on another filesystem
    or a mount point. Symlinks are removed, never followed.

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
    _remove_dir_contents(path, root_st.st_dev)
    os.rmdir(path)


def _remove_dir_contents(path: str, dev: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for entry in os.scandir(fd):
            st = os.lstat(entry.name, dir_fd=fd)
            if stat.S_ISDIR(st.st_mode):
                child = os.path.join(path, entry.name)
                if st.st_dev != dev or os.path.ismount(child):
                    raise TreeRemovalRefused(
                        errno.EBUSY, "refusing to delete a mount point or another filesystem", child
                    )
                _remove_dir_contents(child, dev)
                os.rmdir(entry.name, dir_fd=fd)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
