"""Issue 11, items 1-2: format only what is provably blank, never fsck or mount a device in use.

Every case runs on a real loop device over a sparse file (or a device node made with mknod in
tmp_path), never on a real disk, and checks the sha256 of the whole device after a refusal.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from mount_utils import blank
from mount_utils.blank import (
    DeviceCheckError,
    DeviceInUseError,
    DeviceOpenError,
    inspect_device,
)
from mount_utils.format import FilesystemMismatchError, FormatError, RefuseToFormatError, format_and_mount
from mount_utils.mounter import LinuxMounter
from mount_utils.mountinfo import MountTable
from tests.fixtures_mounts import require_tools, sha256_of

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20
XFS_SIZE_MB = 320  # mkfs.xfs refuses less than 300 MiB; sparse, so cheap


@pytest.fixture
def mounter() -> LinuxMounter:
    return LinuxMounter()


@pytest.fixture
def target(mount_cleanup):
    t = mount_cleanup / "mnt"
    t.mkdir()
    return str(t)


def write_at(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def unused_block_major() -> int:
    """A block major no driver registered (the LOCAL/EXPERIMENTAL ranges of devices.txt):
    opening a node with it fails with ENXIO, so nothing real is ever touched."""
    used = set()
    with open("/proc/devices") as f:
        in_block = False
        for line in f:
            if line.startswith("Block devices"):
                in_block = True
            elif in_block and line.strip():
                used.add(int(line.split()[0]))
    for major in (*range(60, 64), *range(120, 128), *range(240, 254)):
        if major not in used:
            return major
    pytest.skip("no unused block major in the experimental ranges")


def fake_tool(tmp_path, monkeypatch, name: str, body: str) -> None:
    """A stand-in executable first on PATH (the outermost edge: a tool we exec)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    tool = bindir / name
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def refused(mounter, dev, target, fs_type="ext4", exc=RefuseToFormatError, **kw):
    """format_and_mount must raise `exc`, mount nothing and leave every byte as it was."""
    before = sha256_of(dev.path)
    with pytest.raises(exc) as info:
        format_and_mount(mounter, dev.path, target, fs_type, **kw)
    assert dev.path in str(info.value)
    assert not mounter.is_mount_point(target)
    assert sha256_of(dev.path) == before, "a refusal must not touch the device"
    return info.value


# --- cannot open: never "blank" ------------------------------------------------------------

def test_device_that_cannot_be_opened_is_an_error_naming_the_errno(mount_cleanup, mounter, target):
    """blkid -p exits 2 (its "nothing found") when it cannot open the device; we open it first."""
    require_tools("blkid", "wipefs")
    node = str(mount_cleanup / "nodev")
    os.mknod(node, 0o600 | 0o060000, os.makedev(unused_block_major(), 0))
    blkid = subprocess.run(["blkid", "-p", node], capture_output=True, timeout=30)
    assert blkid.returncode == 2, "the bug: blkid calls an unopenable device blank"
    with pytest.raises(DeviceOpenError) as info:
        format_and_mount(mounter, node, target, "ext4")
    assert info.value.errno == errno.ENXIO
    assert "ENXIO" in str(info.value) and node in str(info.value)
    assert not mounter.is_mount_point(target)


# --- data blkid does not recognise ---------------------------------------------------------

def test_random_bytes_at_offset_0_are_refused(loop_device, mounter, target):
    require_tools("blkid", "wipefs")
    write_at(loop_device.path, 0, os.urandom(4096).replace(b"\0", b"\1"))
    err = refused(mounter, loop_device, target)
    assert "non-zero data at offset 0" in str(err)


def test_text_at_offset_0_is_refused(loop_device, mounter, target):
    require_tools("blkid", "wipefs")
    write_at(loop_device.path, 0, b"my notes, not a filesystem\n" * 100)
    err = refused(mounter, loop_device, target)
    assert "non-zero data at offset 0" in str(err)


def test_data_only_in_the_last_mib_is_refused(loop_device, mounter, target):
    require_tools("blkid", "wipefs")
    size = loop_device.size_bytes
    write_at(loop_device.path, size - 100, b"tail data")
    err = refused(mounter, loop_device, target)
    assert f"non-zero data at offset {size - 100}" in str(err)


def test_data_in_the_middle_only_is_not_seen_and_that_is_the_documented_rule(loop_device):
    """Blank means no signature and zeros in the first and last MiB; the middle is not read
    (a whole-device scan of a multi-TiB disk would take hours)."""
    require_tools("blkid", "wipefs")
    write_at(loop_device.path, 10 * MIB, b"middle")
    assert inspect_device(loop_device.path, MountTable.read()).blank


def test_swap_signature_is_refused(loop_device, mounter, target):
    require_tools("blkid", "wipefs", "mkswap")
    subprocess.run(["mkswap", loop_device.path], check=True, capture_output=True, timeout=30)
    err = refused(mounter, loop_device, target)
    assert "swap signature" in str(err)


def test_signature_only_wipefs_names_is_refused(loop_device, mounter, target):
    """A partition table: blkid reports PTTYPE, wipefs names it too; both end in the refusal."""
    require_tools("blkid", "wipefs")
    from tests.fixtures_mounts import write_mbr
    write_mbr(loop_device.path)
    found = inspect_device(loop_device.path, MountTable.read())
    assert any(s.startswith("dos at offset") for s in found.signatures)
    err = refused(mounter, loop_device, target)
    assert "partition table (dos)" in str(err)


# --- in use ---------------------------------------------------------------------------------

def _mkfs_ext4_eager(path: str) -> None:
    """No lazy init: a mounted ext4 then writes nothing by itself (no background itable zeroing)."""
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", path],
                   check=True, capture_output=True, timeout=60)


def test_device_mounted_elsewhere_is_neither_fscked_nor_mounted(loop_device, mounter, mount_cleanup, target,
                                                                   tmp_path, monkeypatch):
    require_tools("blkid", "wipefs", "mkfs.ext4")
    _mkfs_ext4_eager(loop_device.path)
    elsewhere = mount_cleanup / "elsewhere"
    elsewhere.mkdir()
    mounter.mount(loop_device.path, str(elsewhere), "ext4")
    os.sync()
    ran = tmp_path / "fsck-ran"
    fake_tool(tmp_path, monkeypatch, "fsck", f"echo \"$@\" > {ran}\nexit 0\n")
    err = refused(mounter, loop_device, target, exc=DeviceInUseError)
    assert f"mounted at {elsewhere}" in str(err) and "in use" in str(err)
    assert not ran.exists(), "fsck ran on a mounted device"
    assert [m.mount_point for m in MountTable.read().by_source(loop_device.path)] == [str(elsewhere)]


def test_device_open_exclusively_elsewhere_is_in_use(loop_device, mounter, target):
    """EBUSY on our O_EXCL open is "in use" (here another process holds it exclusively, as a
    running mkfs or a device-mapper target would)."""
    require_tools("blkid", "wipefs")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import os,sys,time; os.open({loop_device.path!r}, os.O_RDONLY | os.O_EXCL); "
                          "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        err = refused(mounter, loop_device, target, exc=DeviceInUseError)
        assert "open exclusively by another program (EBUSY)" in str(err)
    finally:
        holder.kill()
        holder.wait()


def _fake_sysfs(root, dev_path: str):
    """A copy of the sysfs layout we read, for the real device number of `dev_path`."""
    st = os.stat(dev_path)
    d = root / "dev" / "block" / f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    (d / "holders").mkdir(parents=True)
    return d


def test_device_with_holders_is_in_use(loop_device, mounter, target, tmp_path):
    """No device-mapper or md here to make a real holder, so the holders rule reads a
    directory tree laid out like /sys (``dev/block/M:m/holders/<name>``) for the real loop
    device; everything else about the device is real."""
    require_tools("blkid", "wipefs")
    sysdir = _fake_sysfs(tmp_path / "sys", loop_device.path)
    (sysdir / "holders" / "dm-7").mkdir()
    err = refused(mounter, loop_device, target, exc=DeviceInUseError, sysfs_root=str(tmp_path / "sys"))
    assert "held by dm-7" in str(err)


def test_whole_disk_with_partitions_is_refused_and_a_used_partition_is_in_use(loop_device, mounter, target,
                                                                              tmp_path, mount_cleanup):
    """Loop devices get no partitions on this kernel (no partition scanning), so the partition
    is described in a sysfs-like tree; for the "used partition" case its device number is that
    of a real mount made here."""
    require_tools("blkid", "wipefs")
    sysroot = tmp_path / "sys"
    sysdir = _fake_sysfs(sysroot, loop_device.path)
    part = sysdir / (os.path.basename(loop_device.path) + "p1")
    (part / "holders").mkdir(parents=True)
    (part / "partition").write_text("1\n")
    (part / "dev").write_text("259:77\n")
    err = refused(mounter, loop_device, target, sysfs_root=str(sysroot))
    assert f"it has partitions ({part.name})" in str(err)

    tmpfs = mount_cleanup / "partmount"
    tmpfs.mkdir()
    mounter.mount_tmpfs(str(tmpfs))
    top = MountTable.read().top(str(tmpfs))
    (part / "dev").write_text(f"{top.major}:{top.minor}\n")
    err = refused(mounter, loop_device, target, exc=DeviceInUseError, sysfs_root=str(sysroot))
    assert f"partition {part.name} mounted at {tmpfs}" in str(err)


# --- an existing filesystem -----------------------------------------------------------------

@pytest.mark.timeout(90)
def test_xfs_requested_as_ext4_is_a_mismatch(loop_device_factory, mounter, target):
    require_tools("blkid", "wipefs", "mkfs.xfs")
    dev = loop_device_factory(XFS_SIZE_MB)
    subprocess.run(["mkfs.xfs", "-q", "-f", dev.path], check=True, capture_output=True, timeout=60)
    err = refused(mounter, dev, target, exc=FilesystemMismatchError)
    assert err.existing == "xfs" and err.requested == "ext4"


def test_existing_ext4_of_the_requested_type_is_fscked_and_mounted(loop_device, mounter, target, tmp_path,
                                                                    monkeypatch):
    """Also shows the stand-in fsck of the "mounted elsewhere" test would have seen a call."""
    require_tools("blkid", "wipefs", "mkfs.ext4")
    _mkfs_ext4_eager(loop_device.path)
    ran = tmp_path / "fsck-ran"
    fake_tool(tmp_path, monkeypatch, "fsck", f"echo \"$@\" > {ran}\nexit 0\n")
    assert format_and_mount(mounter, loop_device.path, target, "ext4") is False
    assert ran.read_text().split() == ["-a", loop_device.path]
    assert MountTable.read().top(target).fs_type == "ext4"
    mounter.unmount(target)


# --- formatting a blank device ----------------------------------------------------------------

@pytest.mark.parametrize("fs_type, flag", [("ext4", ["-E", "nodiscard"]), ("xfs", ["-K"])])
def test_mkfs_never_discards(loop_device, mounter, target, tmp_path, monkeypatch, fs_type, flag):
    require_tools("blkid", "wipefs")
    argv = tmp_path / "argv"
    fake_tool(tmp_path, monkeypatch, f"mkfs.{fs_type}", f"printf '%s\\n' \"$@\" > {argv}\nexit 1\n")
    with pytest.raises(FormatError):
        format_and_mount(mounter, loop_device.path, target, fs_type)
    args = argv.read_text().split("\n")
    assert any(args[i:i + len(flag)] == flag for i in range(len(args))), args


def test_blank_device_is_formatted_and_data_outside_the_fs_metadata_survives(loop_device, mounter, target):
    """Without discard, mkfs writes only its own metadata: a marker in the middle of the
    device (where neither the ext4 metadata of a 64 MiB filesystem nor our blank check look)
    is still there after the format."""
    require_tools("blkid", "wipefs", "mkfs.ext4")
    assert inspect_device(loop_device.path, MountTable.read()).blank
    offset = 40 * MIB + 12345
    write_at(loop_device.path, offset, b"MIDDLE-MARKER")
    assert format_and_mount(mounter, loop_device.path, target, "ext4") is True
    mounter.unmount(target)
    with open(loop_device.path, "rb") as f:
        f.seek(offset)
        assert f.read(13) == b"MIDDLE-MARKER"


# --- an interrupted format ----------------------------------------------------------------------

def test_interrupted_format_is_redone_only_on_the_same_device_instance(loop_device, mounter, target, tmp_path,
                                                                      monkeypatch):
    """mkfs killed after writing part of its metadata leaves a device that is no longer blank.
    The marker written before mkfs lets the next attempt finish the job on that very device
    (same diskseq, same boot); without it, or for another attach of the backing file, the
    device is refused like any other."""
    require_tools("blkid", "wipefs", "mkfs.ext4", "losetup")
    marker = str(tmp_path / "formatting-pv1")
    saved_path = os.environ["PATH"]
    fake_tool(tmp_path, monkeypatch, "mkfs.ext4",
              f"printf 'half a filesystem' | dd of={loop_device.path} bs=1 seek=4096 conv=notrunc 2>/dev/null\n"
              "kill -9 $$\n")
    with pytest.raises(FormatError) as info:
        format_and_mount(mounter, loop_device.path, target, "ext4", format_marker=marker)
    assert info.value.uncertain
    recorded = json.load(open(marker))
    assert recorded["device"] == loop_device.path and recorded["fs_type"] == "ext4"
    monkeypatch.setenv("PATH", saved_path)

    # Without the marker (or with another one) it is data like any other.
    refused(mounter, loop_device, target, format_marker=str(tmp_path / "other"))
    assert "non-zero data at offset 4096" in str(
        refused(mounter, loop_device, target))

    # With it, the format is finished, and the marker removed.
    assert format_and_mount(mounter, loop_device.path, target, "ext4", format_marker=marker) is True
    assert not os.path.exists(marker)
    mounter.unmount(target)


def test_marker_of_another_attach_does_not_match(loop_device, mounter, target, tmp_path):
    require_tools("blkid", "wipefs", "losetup")
    write_at(loop_device.path, 0, b"not ours")
    st = os.stat(loop_device.path)
    marker = tmp_path / "formatting-pv1"
    with open(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/diskseq") as f:
        diskseq = int(f.read())
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    marker.write_text(json.dumps({"device": loop_device.path, "dev": f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}",
                                  "diskseq": str(diskseq - 1), "boot_id": boot_id, "fs_type": "ext4"}))
    refused(mounter, loop_device, target, format_marker=str(marker))
    assert marker.exists()


# --- bounded --------------------------------------------------------------------------------------

def test_a_hung_read_is_uncertain_not_a_hang():
    started = time.monotonic()
    with pytest.raises(DeviceCheckError) as info:
        blank._bounded(lambda: time.sleep(5), 0.2, "reading", "/dev/hung")
    assert info.value.uncertain and "/dev/hung" in str(info.value) and "did not finish" in str(info.value)
    assert time.monotonic() - started < 2


def test_abandoned_open_closes_its_descriptor_when_it_returns(tmp_path):
    closed = []
    path = tmp_path / "f"
    path.write_text("x")

    def slow_open() -> int:
        time.sleep(0.3)
        return os.open(path, os.O_RDONLY)

    def close(fd: int) -> None:
        os.close(fd)
        closed.append(fd)

    with pytest.raises(DeviceCheckError):
        blank._bounded(slow_open, 0.05, "opening", str(path), on_abandoned=close)
    deadline = time.monotonic() + 5
    while not closed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert closed
