"""Safe removal of mount points and the empty directories above them.

Deleting under a volume directory can destroy user data if a mount is still there (or came
back). So removal here is safe *by construction*: only ``rmdir`` of an empty directory, or
``unlink`` of an empty regular file / a device node / a symlink (the targets we create for
bind mounts of single files and devices), after checking that nothing is mounted. Nothing is
ever removed recursively.
"""

from __future__ import annotations

import errno
import os
import stat

from mount_utils.mounter import Mounter, NotMountedError
from mount_utils.paths import PathSafetyError, open_dir_below, relative_components

# Stacked mounts (the same path mounted twice after an uncertain retry) need one unmount each;
# more than a few means something keeps remounting it, and we stop rather than spin.
MAX_UNMOUNTS = 4

# stat() on a dead FUSE or stale NFS mount fails with these: the path exists and is (most
# likely) a broken mount point that still has to be unmounted (k8s IsCorruptedMnt).
CORRUPTED_MOUNT_ERRNOS = frozenset(
    {errno.ENOTCONN, errno.ESTALE, errno.EIO, errno.EACCES, errno.EHOSTDOWN, errno.EWOULDBLOCK}
)


class CleanupError(OSError):
    """A mount point could not be cleaned up; ``filename`` / ``path`` name it."""

    def __init__(self, path: str, reason: str, err: int = errno.EBUSY) -> None:
        super().__init__(err, reason, path)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot clean up {self.path!r}: {self.reason}"


class StillMountedError(CleanupError):
    """The path is still a mount point after unmounting."""


class NotEmptyError(CleanupError):
    """The path is a non-empty directory or non-empty file: it is left alone."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason, errno.ENOTEMPTY)


def _lstat(path: str) -> os.stat_result | None:
    """lstat, with None for a missing path; a corrupted mount re-raises as-is for the caller."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def cleanup_mount_point(path: str, mounter: Mounter, mounted: bool = False) -> None:
    """Unmount `path` if it is a mount point (all stacked mounts), then remove it.

    A missing path is success. The path is removed only if it is then an empty directory, an
    empty regular file, a device node or a symlink; raises `StillMountedError` if it stays
    mounted and `NotEmptyError` (or `CleanupError`) otherwise, always naming the path. An
    unmount failure (e.g. EBUSY) propagates as the mounter's `MountError`. A broken mount
    (dead FUSE daemon, stale NFS) is unmounted like any other. ``mounted``: the caller has
    just seen `path` mounted, so the first look is skipped (a tear-down of 10,000 volumes
    made it twice).
    """
    if not mounted:
        try:
            if _lstat(path) is None:
                return
        except OSError as e:
            if e.errno not in CORRUPTED_MOUNT_ERRNOS:
                raise
            # A broken mount: fall through to unmount it.
    for attempt in range(MAX_UNMOUNTS):
        if not (mounted and attempt == 0) and not mounter.is_mount_point(path):
            break
        try:
            mounter.unmount(path)
        except NotMountedError:
            break
    else:
        if mounter.is_mount_point(path):
            raise StillMountedError(path, f"still a mount point after {MAX_UNMOUNTS} unmounts")
    _remove_unmounted(path)


def _remove_unmounted(path: str) -> None:
    try:
        os.rmdir(path)  # the usual case: an empty directory, removed with one call
        return
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise NotEmptyError(path, "directory is not empty") from None
        if e.errno == errno.EBUSY:
            raise StillMountedError(path, "busy (mounted again?)") from None
        if e.errno != errno.ENOTDIR:
            raise
    st = _lstat(path)
    if st is None:
        return
    mode = st.st_mode
    try:
        if stat.S_ISDIR(mode):
            os.rmdir(path)
        elif stat.S_ISREG(mode):
            if st.st_size != 0:
                raise NotEmptyError(path, f"is a regular file of {st.st_size} bytes, not removing it")
            # Re-check right before unlinking: someone may have written to it meanwhile.
            again = os.lstat(path)
            if (again.st_ino, again.st_dev) != (st.st_ino, st.st_dev) or again.st_size != 0:
                raise NotEmptyError(path, "changed while being cleaned up, not removing it")
            os.unlink(path)
        elif stat.S_ISBLK(mode) or stat.S_ISCHR(mode) or stat.S_ISLNK(mode):
            # A device node or a symlink holds no data of its own.
            os.unlink(path)
        else:
            raise CleanupError(path, f"is not a directory, file or device (mode {mode:o})", errno.EINVAL)
    except FileNotFoundError:
        return
    except OSError as e:
        if isinstance(e, CleanupError):
            raise
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise NotEmptyError(path, "directory is not empty") from None
        if e.errno == errno.EBUSY:
            raise StillMountedError(path, "busy (mounted again?)") from None
        raise


def remove_empty_dirs(path: str, stop_at: str) -> None:
    """rmdir `path` and then its parents while they are empty, stopping at (never removing)
    `stop_at`. Missing or non-empty directories end the walk quietly.

    Each rmdir is relative to an fd of its parent opened from `stop_at` without following a
    symlink (`open_dir_below`), so a symlinked component can never redirect the removal
    elsewhere (`PathSafetyError`). The walk starts at the deepest level and opens only the
    parents it needs: usually the first rmdir finds the directory not empty and stops.
    `path` must be `stop_at` or below it, and must not contain ``..``.
    """
    components = relative_components(stop_at, path)
    for i in range(len(components) - 1, -1, -1):
        try:
            with open_dir_below(stop_at, components[:i]) as parent:
                os.rmdir(components[i], dir_fd=parent)
        except FileNotFoundError:
            continue  # already gone (or its parent is): try the level above
        except PathSafetyError:
            raise
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return
            if e.errno == errno.ENOTDIR:
                raise PathSafetyError(os.path.join(stop_at, *components[: i + 1]), "not a directory",
                                      e.errno) from None
            raise
