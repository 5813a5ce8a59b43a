"""Safe format-and-mount and resize on real loop devices over sparse files."""

from __future__ import annotations

import os
import subprocess

import pytest

from mount_utils.format import (
    DiskFormat,
    FilesystemMismatchError,
    FormatError,
    RefuseToFormatError,
    UnformattedReadOnlyError,
    format_and_mount,
    probe,
    resize_filesystem,
)
from mount_utils.mounter import LinuxMounter
from mount_utils.mountinfo import MountTable
from tests.fixtures_mounts import (
    CAP_SYS_RESOURCE,
    assert_no_mounts_under,
    has_capability,
    require_tools,
    sha256_of,
    write_mbr,
)

# mkfs.xfs refuses filesystems smaller than 300 MiB; the file is sparse, so this is cheap.
XFS_SIZE_MB = 320


@pytest.fixture
def mounter() -> LinuxMounter:
    return LinuxMounter()


@pytest.fixture
def target(mount_cleanup):
    t = mount_cleanup / "mnt"
    t.mkdir()
    return str(t)


def _statvfs_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def test_probe_blank_and_formatted(loop_device):
    require_tools("blkid", "mkfs.ext4")
    assert probe(loop_device.path) == DiskFormat(None, None)
    assert probe(loop_device.path).blank
    subprocess.run(["mkfs.ext4", "-q", "-F", loop_device.path], check=True, capture_output=True, timeout=60)
    assert probe(loop_device.path) == DiskFormat("ext4", None)


def test_probe_error_names_device(tmp_path):
    require_tools("blkid")
    with pytest.raises(FormatError) as exc:
        probe(str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(exc.value) and exc.value.command == "blkid"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fs_type, size_mb", [("ext4", 64), ("xfs", XFS_SIZE_MB)])
def test_format_then_mount_again_keeps_data(loop_device_factory, target, mounter, fs_type, size_mb):
    require_tools("blkid", f"mkfs.{fs_type}", "fsck")
    dev = loop_device_factory(size_mb)
    assert format_and_mount(mounter, dev.path, target, fs_type) is True
    top = MountTable.read().top(target)
    assert top.fs_type == fs_type and top.source == dev.path
    with open(os.path.join(target, "data"), "w") as f:
        f.write("survives")
    mounter.unmount(target)

    assert format_and_mount(mounter, dev.path, target, fs_type) is False
    with open(os.path.join(target, "data")) as f:
        assert f.read() == "survives"
    mounter.unmount(target)


@pytest.mark.timeout(60)
def test_existing_other_filesystem_is_a_mismatch(loop_device, target, mounter):
    """Like the kubelet's FilesystemMismatch: an ext4 device asked for as xfs is neither
    fsck'd nor mounted (it used to be mounted as ext4 with only a warning)."""
    require_tools("blkid", "mkfs.ext4", "fsck")
    subprocess.run(["mkfs.ext4", "-q", "-F", loop_device.path], check=True, capture_output=True, timeout=60)
    before = sha256_of(loop_device.path)
    with pytest.raises(FilesystemMismatchError) as exc:
        format_and_mount(mounter, loop_device.path, target, "xfs")
    assert exc.value.existing == "ext4" and exc.value.requested == "xfs"
    assert loop_device.path in str(exc.value) and "type ext4" in str(exc.value)
    assert not mounter.is_mount_point(target)
    assert sha256_of(loop_device.path) == before


@pytest.mark.timeout(60)
def test_partitioned_device_refused_and_untouched(loop_device, target, mounter):
    require_tools("blkid")
    write_mbr(loop_device.path, 64 << 20)
    assert probe(loop_device.path).pt_type == "dos"
    before = sha256_of(loop_device.path)
    with pytest.raises(RefuseToFormatError) as exc:
        format_and_mount(mounter, loop_device.path, target, "ext4")
    assert loop_device.path in str(exc.value) and "partition table (dos)" in str(exc.value)
    assert sha256_of(loop_device.path) == before
    assert not mounter.is_mount_point(target)


@pytest.mark.timeout(60)
def test_read_only_blank_device_refused(loop_device, target, mounter):
    require_tools("blkid")
    before = sha256_of(loop_device.path)
    with pytest.raises(UnformattedReadOnlyError) as exc:
        format_and_mount(mounter, loop_device.path, target, "ext4", read_only=True)
    assert loop_device.path in str(exc.value)
    assert sha256_of(loop_device.path) == before
    assert not mounter.is_mount_point(target)


@pytest.mark.timeout(60)
def test_read_only_mount_of_formatted_device(loop_device, target, mounter):
    require_tools("blkid", "mkfs.ext4")
    subprocess.run(["mkfs.ext4", "-q", "-F", loop_device.path], check=True, capture_output=True, timeout=60)
    assert format_and_mount(mounter, loop_device.path, target, "ext4", options=["noatime"], read_only=True) is False
    top = MountTable.read().top(target)
    assert top.read_only and "noatime" in top.mount_options
    mounter.unmount(target)


@pytest.mark.timeout(60)
def test_fsck_uncorrectable_errors_refuse_mount(loop_device, target, mounter):
    """Clear the root inode and flag the filesystem as having errors (so preen mode does not
    skip it as clean): ``fsck -a`` exits 4, the device must not be mounted."""
    require_tools("blkid", "mkfs.ext4", "fsck", "debugfs")
    subprocess.run(["mkfs.ext4", "-q", "-F", loop_device.path], check=True, capture_output=True, timeout=60)
    for request in ("clri <2>", "ssv state 2"):
        subprocess.run(["debugfs", "-w", "-R", request, loop_device.path], check=True, capture_output=True,
                       timeout=60)
    with pytest.raises(FormatError) as exc:
        format_and_mount(mounter, loop_device.path, target, "ext4")
    assert "has errors" in str(exc.value) and loop_device.path in str(exc.value)
    assert not mounter.is_mount_point(target)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("fs_type, size_mb, new_mb", [("ext4", 64, 128), ("xfs", XFS_SIZE_MB, XFS_SIZE_MB + 128)])
def test_online_resize_after_growing_device(loop_device_factory, target, mounter, fs_type, size_mb, new_mb):
    require_tools("blkid", f"mkfs.{fs_type}", "resize2fs" if fs_type == "ext4" else "xfs_growfs")
    if fs_type == "ext4" and not has_capability(CAP_SYS_RESOURCE):
        pytest.skip("ext4 online resize needs CAP_SYS_RESOURCE, which this sandbox does not grant")
    dev = loop_device_factory(size_mb)
    format_and_mount(mounter, dev.path, target, fs_type)
    before = _statvfs_bytes(target)
    dev.grow(new_mb)
    resize_filesystem(dev.path, target, fs_type)
    after = _statvfs_bytes(target)
    assert after > before + (new_mb - size_mb) * (1 << 20) * 0.8
    resize_filesystem(dev.path, target, fs_type)  # already full size: a no-op, not an error
    mounter.unmount(target)


@pytest.mark.timeout(90)
def test_offline_ext4_resize_after_growing_device(loop_device, target, mounter):
    require_tools("blkid", "mkfs.ext4", "resize2fs", "fsck")
    format_and_mount(mounter, loop_device.path, target, "ext4")
    before = _statvfs_bytes(target)
    (open(os.path.join(target, "data"), "w")).close()
    mounter.unmount(target)
    loop_device.grow(128)
    resize_filesystem(loop_device.path, target, "ext4")  # not mounted: resize2fs works offline
    assert format_and_mount(mounter, loop_device.path, target, "ext4") is False
    assert _statvfs_bytes(target) > before + 64 * (1 << 20) * 0.8
    assert os.path.exists(os.path.join(target, "data"))
    mounter.unmount(target)


def test_resize_unsupported_and_failure_name_device(loop_device, tmp_path):
    with pytest.raises(FormatError, match="not supported"):
        resize_filesystem(loop_device.path, str(tmp_path), "vfat")
    require_tools("resize2fs")
    with pytest.raises(FormatError) as exc:
        resize_filesystem(loop_device.path, str(tmp_path), "ext4")  # blank: resize2fs fails
    assert loop_device.path in str(exc.value) and exc.value.command == "resize2fs"


def test_teardown_leaves_nothing(mount_cleanup):
    assert_no_mounts_under(mount_cleanup)


def _fake_mkfs(tmp_path, monkeypatch, fs_type: str, body: str) -> None:
    """A stand-in mkfs.TYPE on PATH, for faults a real mkfs cannot be made to show (a hang,
    death by SIGKILL)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    tool = bindir / f"mkfs.{fs_type}"
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


@pytest.mark.timeout(30)
def test_mkfs_timeout_is_uncertain(loop_device, target, mounter, tmp_path, monkeypatch):
    require_tools("blkid")
    _fake_mkfs(tmp_path, monkeypatch, "vmrslow", "exec sleep 30\n")
    monkeypatch.setattr("mount_utils.format.MKFS_TIMEOUT", 0.5)
    with pytest.raises(FormatError) as exc:
        format_and_mount(mounter, loop_device.path, target, "vmrslow")
    assert exc.value.uncertain and "timed out" in str(exc.value) and loop_device.path in str(exc.value)
    assert exc.value.command == "mkfs.vmrslow"
    assert not mounter.is_mount_point(target)


@pytest.mark.timeout(30)
def test_mkfs_killed_is_uncertain_and_failure_is_not(loop_device, target, mounter, tmp_path, monkeypatch):
    require_tools("blkid")
    _fake_mkfs(tmp_path, monkeypatch, "vmrkill", "kill -9 $$\n")
    with pytest.raises(FormatError) as exc:
        format_and_mount(mounter, loop_device.path, target, "vmrkill")
    assert exc.value.uncertain and exc.value.returncode == -9
    _fake_mkfs(tmp_path, monkeypatch, "vmrfail", "echo 'bad geometry' >&2; exit 1\n")
    with pytest.raises(FormatError) as exc:
        format_and_mount(mounter, loop_device.path, target, "vmrfail")
    assert not exc.value.uncertain and exc.value.returncode == 1 and "bad geometry" in str(exc.value)


def test_missing_tool_named(loop_device, target, mounter):
    require_tools("blkid")
    with pytest.raises(FormatError) as exc:
        format_and_mount(mounter, loop_device.path, target, "nosuchfs")
    assert "mkfs.nosuchfs not found" in str(exc.value) and loop_device.path in str(exc.value)
