"""Symlink-safe creation of directories and files below a trusted root.

Volume directories live below the daemon's root dir, but parts of that tree are writable by
pods (a volume's contents) or by CSI drivers. If a component were replaced by a symlink,
``os.makedirs`` followed by a mount would happily mount *somewhere else on the host*. Here
every component below the root is opened relative to its parent's fd with ``O_NOFOLLOW``, so a
symlink anywhere below the root is refused instead of followed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from mount_utils import syscalls as sc

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class PathSafetyError(OSError):
    """A path is outside its root, contains ``..``, or has a symlink (or non-directory) where
    a directory was expected. ``filename`` is the offending path."""

    def __init__(self, path: str, reason: str = "refusing unsafe path", err: int = errno.ELOOP) -> None:
        super().__init__(err, reason, path)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.path!r}"


def relative_components(root: str, path: str) -> list[str]:
    """The components of `path` below `root` (`path` absolute, or relative to `root`).

    Refuses ``..`` anywhere (even where it would cancel out: it is never needed and hides
    intent), and absolute paths that are not `root` or below it, component-wise.
    """
    if not root or not os.path.isabs(root):
        raise PathSafetyError(root, "root must be an absolute path", errno.EINVAL)
    if "\0" in path:
        raise PathSafetyError(path.replace("\0", "\\0"), "path contains NUL", errno.EINVAL)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathSafetyError(path, "path contains '..'", errno.EINVAL)
    if not os.path.isabs(path):
        return parts
    root_parts = [p for p in os.path.normpath(root).split("/") if p]
    if ".." in root_parts or parts[: len(root_parts)] != root_parts:
        raise PathSafetyError(path, f"path is not under {root!r}", errno.EINVAL)
    return parts[len(root_parts):]


def _open_component(dir_fd: int, name: str, full: str, flags: int = _DIR_FLAGS) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PathSafetyError(full, "a component is a symlink or not a directory", e.errno) from None
        raise


# openat2 resolution for a walk below a trusted root: no symlink anywhere, no escape.
_RESOLVE_BELOW = sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS | sc.RESOLVE_BENEATH


def _open_deepest_existing(root_fd: int, components: list[str]) -> tuple[int, int] | None:
    """(fd, k): an fd of the deepest existing directory root/components[:k], resolved in one
    openat2 each with no symlink followed. Most paths exist, or miss only their last one or
    two components, so this replaces a syscall per component with one or two.

    None when openat2 is unavailable or refuses (a symlink, a non-directory): the caller
    walks component by component, which names the offending component precisely."""
    for k in range(len(components), 0, -1):
        try:
            fd = sc.openat2(root_fd, "/".join(components[:k]), _DIR_FLAGS, _RESOLVE_BELOW)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        if fd is None:
            return None
        return fd, k
    return None


@contextmanager
def open_dir_below(root: str, components: list[str], *, create: bool = False,
                   mode: int = 0o750) -> Iterator[int]:
    """Yield an fd of directory root/components..., never following a symlink below `root`
    (creating missing components with `mode` when `create`). The fd is closed on exit."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        start = 0
        found = _open_deepest_existing(fd, components) if components else None
        if found is not None:
            os.close(fd)
            fd, start = found
        walked = "/".join([root.rstrip("/"), *components[:start]])
        for name in components[start:]:
            walked = f"{walked}/{name}"
            if create:
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                except FileExistsError:
                    pass
            nfd = _open_component(fd, name, walked)
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


def safe_makedirs(root: str, path: str, mode: int = 0o750) -> None:
    """Create `path` (absolute under `root`, or relative to it) and missing parents below
    `root`, never following a symlink below `root`. `root` itself must exist and is trusted.

    Existing directories are fine (idempotent). Raises `PathSafetyError` for a symlink or a
    non-directory on the way, for ``..`` or for a path outside `root`.
    """
    with open_dir_below(root, relative_components(root, path), create=True, mode=mode):
        pass


def check_no_symlinks(root: str, path: str) -> None:
    """Raise `PathSafetyError` if an existing component of `path` below `root` is a symlink
    (or an intermediate component is not a directory). Missing components end the check."""
    components = relative_components(root, path)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        walked = root.rstrip("/")
        for i, name in enumerate(components):
            walked = f"{walked}/{name}"
            try:
                nfd = os.open(name, _PATH_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return
            except NotADirectoryError:
                raise PathSafetyError(walked, "a component is not a directory", errno.ENOTDIR) from None
            os.close(fd)
            fd = nfd
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                raise PathSafetyError(walked, "a component is a symlink")
            if i < len(components) - 1 and not stat.S_ISDIR(st.st_mode):
                raise PathSafetyError(walked, "a component is not a directory", errno.ENOTDIR)
    finally:
        os.close(fd)


def safe_create_file(root: str, path: str, mode: int = 0o640) -> None:
    """Create an empty file at `path` below `root` (parents as in `safe_makedirs`), the
    target of a bind mount of a single file or device. An existing regular file (or a device
    node, or a file with a device already bind-mounted on it) is accepted; a symlink is
    refused with `PathSafetyError`; a directory raises IsADirectoryError."""
    components = relative_components(root, path)
    if not components:
        raise PathSafetyError(path, "cannot create a file at the root itself", errno.EINVAL)
    full = os.path.join(root, *components)
    with open_dir_below(root, components[:-1], create=True) as parent:
        # O_NONBLOCK: never block opening an existing FIFO or device someone put there.
        flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(components[-1], flags, mode, dir_fd=parent)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PathSafetyError(full, "the file is a symlink") from None
            if e.errno == errno.EISDIR:
                raise IsADirectoryError(errno.EISDIR, "is a directory, expected a file", full) from None
            raise
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            raise PathSafetyError(full, "exists and is not a regular file or device", errno.EEXIST)
