"""Shared fixtures and helpers for tests that make real mounts and loop devices.

Use from a test module or a conftest.py::

    from tests.fixtures_mounts import loop_device, loop_device_factory, mount_cleanup  # noqa: F401
    from tests.fixtures_mounts import assert_no_mounts_under, LoopDevice, make_loop_device

Fixtures (all clean up whatever happens, and only what they created):

* ``mount_cleanup`` -> the test's ``tmp_path``; at teardown every mount below it is unmounted
  (top-most first, lazily if busy) and the test FAILS if something could not be unmounted.
* ``loop_device`` -> a `LoopDevice` of 64 MiB over a sparse file in tmp_path.
* ``loop_device_factory(size_mb=64, name=None)`` -> a new `LoopDevice` each call; all detached
  at teardown (after their mounts are unmounted).

Context manager for non-pytest code: ``with make_loop_device(size_mb, directory) as dev: ...``.

Helpers: `mounts_under(path)`, `unmount_all_under(path)`, `assert_no_mounts_under(path)`,
`sha256_of(path)`, `write_mbr(path)` (a minimal DOS partition table, so ``blkid -p`` reports
PTTYPE=dos: this kernel has no partition support for loop devices), `require_tools(*names)`,
`require_root()`, `has_capability(CAP_SYS_RESOURCE)` (this sandbox lacks it: ext4 *online*
resize fails with EPERM here), `attach_loop(file)`. `LoopDevice` has ``.path``,
``.backing_file``, ``.size_bytes``, ``.grow(new_size_mb)`` (truncate + ``losetup -c``) and
``.detach()`` (unmounts its mounts first; idempotent).

Beware: pytest deletes old ``pytest-of-root/pytest-N`` directories with a recursive delete
that crosses mount points. A mount left behind by a crashed test can have its *contents*
deleted by a later run; always use ``mount_cleanup`` (or unmount in a finally).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from mount_utils import syscalls as sc
from mount_utils.mountinfo import MountInfo, MountTable

# losetup/umount of a just-used device can report EBUSY for a moment (the kernel drops its
# references asynchronously); retry for this long before giving up.
DETACH_RETRY_SECONDS = 5.0


def require_tools(*names: str) -> None:
    """Skip the calling test unless every named executable is on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (not installed)")


CAP_SYS_ADMIN = 21
CAP_SYS_RESOURCE = 24  # ext4 online resize (EXT4_IOC_RESIZE_FS) needs it


def has_capability(cap: int) -> bool:
    """Whether this process has capability number `cap` in its effective set."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    return False


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")


def mounts_under(path: str | os.PathLike[str]) -> list[MountInfo]:
    """Mounts at or below `path` (symlinks in `path` resolved), in mount order."""
    return MountTable.read().under(os.path.realpath(path))


def unmount_all_under(path: str | os.PathLike[str]) -> list[str]:
    """Unmount everything at or below `path`, newest first; lazily (MNT_DETACH) when busy.
    Returns the mount points it could not unmount (normally empty)."""
    failed: list[str] = []
    for _ in range(20):
        mounts = mounts_under(path)
        if not mounts:
            return []
        failed = []
        for m in reversed(mounts):
            try:
                sc.sys_umount(m.mount_point, sc.UMOUNT_NOFOLLOW)
            except OSError as e:
                if e.errno == errno.EINVAL:
                    continue  # already gone (its parent went first) or stacked below another
                try:
                    sc.sys_umount(m.mount_point, sc.UMOUNT_NOFOLLOW | sc.MNT_DETACH)
                except OSError:
                    failed.append(m.mount_point)
    return failed or [m.mount_point for m in mounts_under(path)]


def assert_no_mounts_under(path: str | os.PathLike[str]) -> None:
    """Fail with the list of mount points if anything is mounted at or below `path`."""
    left = [m.mount_point for m in mounts_under(path)]
    assert not left, f"mounts left under {path}: {left}"


def sha256_of(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of a whole file or device (to prove a device was left untouched)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_mbr(path: str | os.PathLike[str], size_bytes: int | None = None) -> None:
    """Write a minimal DOS partition table (one Linux partition from sector 2048 to the end)
    at the start of file or device `path`: boot signature 0x55AA at offset 510, a disk
    signature and one partition entry, which is what ``blkid -p`` needs to report PTTYPE=dos."""
    if size_bytes is None:
        size_bytes = os.stat(path).st_size or 64 << 20
    sectors = size_bytes // 512
    mbr = bytearray(512)
    struct.pack_into("<I", mbr, 440, 0x5EED1234)  # disk signature
    entry = struct.pack("<B3sB3sII", 0x00, b"\x00\x21\x00", 0x83, b"\xfe\xff\xff", 2048, max(sectors - 2048, 1))
    mbr[446:462] = entry
    mbr[510:512] = b"\x55\xaa"
    with open(path, "r+b") as f:
        f.write(mbr)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class LoopDevice:
    """An attached loop device over a sparse `backing_file`."""

    path: str
    backing_file: str

    @property
    def size_bytes(self) -> int:
        with open(f"/sys/class/block/{os.path.basename(self.path)}/size") as f:
            return int(f.read()) * 512

    def grow(self, new_size_mb: int) -> None:
        """Extend the backing file and tell the loop driver (``losetup -c``)."""
        os.truncate(self.backing_file, new_size_mb << 20)
        subprocess.run(["losetup", "-c", self.path], check=True, capture_output=True, timeout=30)

    def detach(self) -> None:
        """Unmount every mount of this device, then detach it (idempotent)."""
        for m in reversed(MountTable.read().by_source(self.path)):
            unmount_all_under(m.mount_point)
        deadline = time.monotonic() + DETACH_RETRY_SECONDS
        while True:
            if not _attached(self.path, self.backing_file):
                return
            proc = subprocess.run(["losetup", "-d", self.path], capture_output=True, text=True, timeout=30)
            if proc.returncode == 0 or time.monotonic() > deadline:
                if proc.returncode != 0:
                    raise RuntimeError(f"losetup -d {self.path} failed: {proc.stderr.strip()}")
                return
            time.sleep(0.1)


def _attached(dev: str, backing: str) -> bool:
    """Whether `dev` is still attached to `backing` (it may already have been reused)."""
    try:
        with open(f"/sys/class/block/{os.path.basename(dev)}/loop/backing_file") as f:
            return os.path.realpath(f.read().strip()) == os.path.realpath(backing)
    except FileNotFoundError:
        return False


def attach_loop(backing_file: str) -> LoopDevice:
    """Attach an existing file to the first free loop device."""
    proc = subprocess.run(["losetup", "--find", "--show", backing_file], capture_output=True, text=True,
                          timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {proc.stderr.strip()}")
    return LoopDevice(proc.stdout.strip(), backing_file)


@contextlib.contextmanager
def make_loop_device(size_mb: int = 64, directory: str | os.PathLike[str] | None = None,
                     name: str | None = None) -> Iterator[LoopDevice]:
    """A loop device over a new sparse file of `size_mb` MiB in `directory` (a temporary dir
    if None). Unmounts its mounts, detaches it and removes the file on exit."""
    require_root()
    require_tools("losetup")
    with contextlib.ExitStack() as stack:
        if directory is None:
            import tempfile
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="loopdev-"))
        backing = os.path.join(os.fspath(directory), name or f"disk-{os.getpid()}-{time.monotonic_ns()}.img")
        with open(backing, "xb") as f:
            f.truncate(size_mb << 20)
        dev = attach_loop(backing)
        try:
            yield dev
        finally:
            try:
                dev.detach()
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(backing)


@pytest.fixture
def mount_cleanup(tmp_path) -> Iterator:
    """tmp_path, with every mount below it removed at teardown (and the test failed if any
    mount could not be removed)."""
    require_root()
    yield tmp_path
    left = unmount_all_under(tmp_path)
    assert not left, f"could not unmount {left}"


@pytest.fixture
def loop_device_factory(tmp_path) -> Iterator[Callable[..., LoopDevice]]:
    """Call ``factory(size_mb=64, name=None)`` for a new loop device; all detached at teardown."""
    stack = contextlib.ExitStack()

    def factory(size_mb: int = 64, name: str | None = None) -> LoopDevice:
        return stack.enter_context(make_loop_device(size_mb, tmp_path, name))

    with stack:
        try:
            yield factory
        finally:
            unmount_all_under(tmp_path)


@pytest.fixture
def loop_device(loop_device_factory) -> LoopDevice:
    """One 64 MiB loop device over a sparse file."""
    return loop_device_factory(64)
