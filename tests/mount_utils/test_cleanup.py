"""cleanup_mount_point and remove_empty_dirs: safe by construction, on real mounts."""

from __future__ import annotations

import errno
import os

import pytest

from mount_utils.cleanup import (
    CleanupError,
    NotEmptyError,
    StillMountedError,
    cleanup_mount_point,
    remove_empty_dirs,
)
from mount_utils.mounter import FakeMounter, LinuxMounter, MountError
from mount_utils.paths import PathSafetyError
from tests.fixtures_mounts import assert_no_mounts_under


@pytest.fixture
def mounter() -> LinuxMounter:
    return LinuxMounter()


# Both ways of resolving a path below the root must refuse the same things.
pytestmark = pytest.mark.usefixtures("path_resolution")

def test_missing_path_is_success(tmp_path, mounter):
    cleanup_mount_point(str(tmp_path / "nope"), mounter)


def test_unmounts_and_removes_dir(mount_cleanup, mounter):
    d = mount_cleanup / "vol"
    d.mkdir()
    mounter.mount_tmpfs(str(d))
    (d / "data").write_text("in tmpfs")
    cleanup_mount_point(str(d), mounter)
    assert not d.exists()
    assert_no_mounts_under(mount_cleanup)


def test_stacked_mounts_all_unmounted(mount_cleanup, mounter):
    src = mount_cleanup / "src"
    src.mkdir()
    (src / "keep").write_text("precious")
    d = mount_cleanup / "vol"
    d.mkdir()
    mounter.bind_mount(str(src), str(d))
    mounter.bind_mount(str(src), str(d))
    mounter.mount_tmpfs(str(d))
    cleanup_mount_point(str(d), mounter)
    assert not d.exists()
    assert (src / "keep").read_text() == "precious"


def test_refuses_non_empty_dir(mount_cleanup, mounter):
    d = mount_cleanup / "vol"
    d.mkdir()
    (d / "data").write_text("user data")
    with pytest.raises(NotEmptyError) as exc:
        cleanup_mount_point(str(d), mounter)
    assert str(d) in str(exc.value) and exc.value.errno == errno.ENOTEMPTY
    assert (d / "data").read_text() == "user data"


def test_never_deletes_a_non_empty_file(mount_cleanup, mounter):
    f = mount_cleanup / "file"
    f.write_text("user data")
    with pytest.raises(NotEmptyError):
        cleanup_mount_point(str(f), mounter)
    assert f.read_text() == "user data"


def test_file_bind_target_unmounted_and_removed(mount_cleanup, mounter):
    src = mount_cleanup / "src.bin"
    src.write_text("device-ish content")
    target = mount_cleanup / "target"
    target.touch()
    mounter.bind_mount(str(src), str(target))
    cleanup_mount_point(str(target), mounter)
    assert not target.exists()
    assert src.read_text() == "device-ish content"


def test_device_node_and_symlink_removed(mount_cleanup, mounter):
    node = mount_cleanup / "dev"
    os.mknod(node, 0o600 | 0o060000, os.makedev(7, 250))  # a block node, nothing behind it
    cleanup_mount_point(str(node), mounter)
    assert not node.exists()
    (mount_cleanup / "real").mkdir()
    (mount_cleanup / "real" / "x").write_text("kept")
    link = mount_cleanup / "link"
    link.symlink_to(mount_cleanup / "real")
    cleanup_mount_point(str(link), mounter)
    assert not os.path.lexists(link)
    assert (mount_cleanup / "real" / "x").read_text() == "kept"


def test_fifo_refused(mount_cleanup, mounter):
    p = mount_cleanup / "fifo"
    os.mkfifo(p)
    with pytest.raises(CleanupError):
        cleanup_mount_point(str(p), mounter)
    assert p.exists()


def test_still_mounted_when_unmount_keeps_failing(tmp_path):
    fake = FakeMounter()
    d = tmp_path / "vol"
    d.mkdir()
    fake.mount_tmpfs(str(d))
    for _ in range(10):
        fake.fail_next(str(d), MountError(errno.EBUSY, "busy", str(d)), operation="unmount")
    with pytest.raises(MountError):
        cleanup_mount_point(str(d), fake)
    assert d.exists()


def test_still_mounted_error_when_mounts_keep_coming_back(tmp_path):
    class Remounting(FakeMounter):
        def unmount(self, target):
            super().unmount(target)
            self.mount_tmpfs(target)

    fake = Remounting()
    d = tmp_path / "vol"
    d.mkdir()
    fake.mount_tmpfs(str(d))
    with pytest.raises(StillMountedError) as exc:
        cleanup_mount_point(str(d), fake)
    assert str(d) in str(exc.value)
    assert d.exists()


def test_remove_empty_dirs(tmp_path):
    root = tmp_path / "root"
    (root / "pods/u1/volumes/p/v").mkdir(parents=True)
    (root / "pods/u1/keep").write_text("x")
    remove_empty_dirs(str(root / "pods/u1/volumes/p/v"), str(root))
    assert not (root / "pods/u1/volumes").exists()
    assert (root / "pods/u1/keep").exists()
    # Missing path: walks up from what exists.
    (root / "a/b").mkdir(parents=True)
    remove_empty_dirs(str(root / "a/b/c/d"), str(root))
    assert not (root / "a").exists() and root.exists()
    remove_empty_dirs(str(root), str(root))  # stop_at itself is never removed
    assert root.exists()


def test_remove_empty_dirs_refuses_outside_and_symlinks(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    other = tmp_path / "other" / "empty"
    other.mkdir(parents=True)
    with pytest.raises(PathSafetyError):
        remove_empty_dirs(str(other), str(root))
    with pytest.raises(PathSafetyError):
        remove_empty_dirs(str(root / ".." / "other" / "empty"), str(root))
    (root / "link").symlink_to(tmp_path / "other")
    with pytest.raises(PathSafetyError):
        remove_empty_dirs(str(root / "link" / "empty"), str(root))
    with pytest.raises(PathSafetyError):
        remove_empty_dirs(str(root / "link"), str(root))
    assert other.exists() and (root / "link").is_symlink()


def test_remove_empty_dirs_stops_at_a_mount_point(mount_cleanup):
    root = mount_cleanup / "root"
    (root / "a" / "m").mkdir(parents=True)
    LinuxMounter().mount_tmpfs(str(root / "a" / "m"))
    with pytest.raises(OSError) as exc:
        remove_empty_dirs(str(root / "a" / "m"), str(root))
    assert exc.value.errno == errno.EBUSY


def _dead_fuse_mount(path: str) -> None:
    """A real broken mount: a FUSE mount whose daemon side (/dev/fuse fd) is closed at once,
    so every access to it fails with ENOTCONN, like a crashed FUSE driver."""
    from mount_utils import syscalls as sc

    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        pytest.skip(f"no /dev/fuse: {e.strerror}")
    try:
        sc.sys_mount("deadfuse", path, "fuse.deadfuse", 0,
                     f"fd={fd},rootmode=40000,user_id=0,group_id=0")
    except OSError as e:
        pytest.skip(f"cannot mount fuse: {e.strerror}")
    finally:
        os.close(fd)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("use_statx", [True, False])
def test_broken_fuse_mount_is_detected_and_cleaned(mount_cleanup, use_statx):
    mounter = LinuxMounter(use_statx=use_statx)
    d = mount_cleanup / "fuse"
    d.mkdir()
    _dead_fuse_mount(str(d))
    with pytest.raises(OSError) as exc:
        os.stat(d)
    assert exc.value.errno == errno.ENOTCONN
    assert mounter.is_mount_point(str(d))
    cleanup_mount_point(str(d), mounter)
    assert not d.exists()
    assert_no_mounts_under(mount_cleanup)
