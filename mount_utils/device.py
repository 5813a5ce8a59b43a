"""Block device facts: is it there and usable, how big, which major:minor.

Without udevd there are no ``/dev/disk/by-*`` links created for us and no udev database, so
these read the device node and sysfs directly. "Ready" means usable for mkfs/mount now: a
preallocated loop device node exists even with nothing attached, so existence alone is not
enough; the size must be non-zero.
"""

from __future__ import annotations

import os
import stat

SYS_DEV_BLOCK = "/sys/dev/block"
SECTOR_SIZE = 512  # sysfs "size" is always in 512-byte sectors, whatever the logical block size
LOOP_MAJOR = 7


class NotABlockDeviceError(ValueError):
    """The path exists but is not a block device node."""

    def __init__(self, path: str) -> None:
        super().__init__(f"not a block device: {path!r}")
        self.path = path


def major_minor(path: str) -> tuple[int, int]:
    """(major, minor) of block device `path` (symlinks followed). FileNotFoundError if missing,
    `NotABlockDeviceError` if it is something else."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        raise NotABlockDeviceError(path)
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def _sysfs_dir(major: int, minor: int) -> str:
    return f"{SYS_DEV_BLOCK}/{major}:{minor}"


def device_size_bytes(path: str) -> int:
    """Size of block device `path` in bytes (0 for a detached loop device).

    Reads sysfs; falls back to seeking to the end of the device when sysfs lacks the entry.
    """
    major, minor = major_minor(path)
    try:
        with open(f"{_sysfs_dir(major, minor)}/size") as f:
            return int(f.read().strip()) * SECTOR_SIZE
    except (FileNotFoundError, ValueError):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)


def loop_backing_file(path: str) -> str | None:
    """The backing file of loop device `path`, or None if it is not an attached loop device."""
    major, minor = major_minor(path)
    try:
        with open(f"{_sysfs_dir(major, minor)}/loop/backing_file") as f:
            return f.read().rstrip("\n") or None
    except FileNotFoundError:
        return None


def block_device_ready(path: str) -> bool:
    """Whether `path` is a block device that can be used now: it exists, is a block device,
    has a non-zero size, and, for a loop device, has a backing file. Never raises."""
    try:
        major, minor = major_minor(path)
        if device_size_bytes(path) <= 0:
            return False
        sysdir = _sysfs_dir(major, minor)
        if os.path.isdir(f"{sysdir}/loop") or os.path.basename(os.path.realpath(path)).startswith("loop"):
            return loop_backing_file(path) is not None
        return True
    except (OSError, ValueError):
        return False


def device_not_ready_reason(path: str) -> str | None:
    """Why `path` is not a usable block device now, in a few words naming the errno where an
    open or stat failed (so an operator can tell "not attached yet" from "no such driver");
    None when `block_device_ready` would say it is ready. Opens nothing that is ready, and only
    read-only, non-blocking and without O_EXCL otherwise. Never raises."""
    import errno as _errno

    def named(err: OSError) -> str:
        code = _errno.errorcode.get(err.errno or 0, str(err.errno))
        return f"{code} ({os.strerror(err.errno)})" if err.errno else str(err)

    try:
        major, minor = major_minor(path)
    except NotABlockDeviceError:
        return "it is not a block device"
    except OSError as err:
        return "it does not exist" if err.errno == _errno.ENOENT else f"stat fails with {named(err)}"
    if not os.path.exists(_sysfs_dir(major, minor)):
        # No kernel device behind the node's number (a driver not loaded, a disk gone, a
        # mknod'd number): the open names it. Not for the loop major: opening a missing loop
        # minor makes the kernel create that loop device.
        if major == LOOP_MAJOR:
            return f"no loop device is registered at {major}:{minor} in {SYS_DEV_BLOCK}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as err:
            return f"no device is registered at {major}:{minor}: open fails with {named(err)}"
        os.close(fd)
        return f"no device is registered at {major}:{minor} in {SYS_DEV_BLOCK}"
    try:
        if device_size_bytes(path) <= 0:
            return f"its size is 0 ({major}:{minor}: nothing attached yet?)"
    except OSError as err:
        return f"its size cannot be read: {named(err)}"
    except ValueError:
        return "its size cannot be read"
    if not block_device_ready(path):
        return "it is a loop device with no backing file"
    return None


def resolve_device(path: str) -> str:
    """The real device node behind `path` (e.g. a ``/dev/disk/by-uuid/...`` symlink).

    FileNotFoundError if it (or its target) does not exist; `NotABlockDeviceError` if the
    result is not a block device.
    """
    real = os.path.realpath(path, strict=True)
    major_minor(real)
    return real
