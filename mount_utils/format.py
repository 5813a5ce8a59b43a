"""Safe format-and-mount of block devices, and online filesystem resize (k8s SafeFormatAndMount).

The one rule that matters: **never format a device that holds anything**. A device is
formatted only when `mount_utils.blank` proves it blank: we could open it exclusively, nobody
mounts, holds or swaps on it, it has no partitions, neither ``blkid -p`` nor ``wipefs`` names a
signature, and its first and last MiB are zeros. Anything else refuses and leaves the device
untouched, and mkfs never discards (``-E nodiscard``, ``-K``), so it writes only its own
metadata. An existing filesystem is fsck'd and mounted only when nobody else uses the device,
and only when it is of the requested type (otherwise `FilesystemMismatchError`, as the
kubelet's FilesystemMismatch).

A killed mkfs leaves a half-written device that is no longer blank. With a `format_marker`
file the caller lets us recognise our own interrupted format: the marker is written before
mkfs starts and removed after it succeeded (before the mount), and names the device instance
(device number, ``diskseq``, boot id). A later call that finds a matching marker redoes mkfs,
which is safe because that very device instance was proven blank before. After a reboot, or on
another device instance, the marker does not match and the device is refused like any other.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from mount_utils.blank import SYSFS_ROOT, Inspection, inspect_device, partitions
from mount_utils.child import helper_command
from mount_utils.mounter import Mounter

log = logging.getLogger(__name__)

# blkid reads a few sectors; seconds means a hung device.
PROBE_TIMEOUT = 30.0
# mkfs on a multi-TiB device with lazy init still finishes in well under this; a slower one
# is treated as hung (the device is then in an unknown state and the error says so).
MKFS_TIMEOUT = 600.0
# fsck -a of a large, dirty ext4 can take minutes; this bounds a stuck one.
FSCK_TIMEOUT = 600.0
# resize2fs / xfs_growfs online growth is quick (only new groups are initialised).
RESIZE_TIMEOUT = 300.0

BLKID_NOTHING_FOUND = 2  # blkid: "the specified token was not found", i.e. a blank device
FSCK_ERRORS_CORRECTED = 1
FSCK_REBOOT_ADVISED = 2
FSCK_ERRORS_UNCORRECTED = 4

_EXT = frozenset({"ext2", "ext3", "ext4"})
# Never discard: a discard throws away the whole device, so an error in deciding "blank" would
# cost everything on it instead of only what mkfs writes.
_NODISCARD = ["-E", "nodiscard"]
_MKFS_ARGS = {"ext2": ["-F", "-m0", *_NODISCARD], "ext3": ["-F", "-m0", *_NODISCARD],
              "ext4": ["-F", "-m0", *_NODISCARD], "xfs": ["-f", "-K"]}
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


class FormatError(Exception):
    """A probe, mkfs, fsck or resize failed. The message names the command and device.

    ``returncode`` is the tool's exit status when it ran to an exit (negative: killed by that
    signal). ``uncertain`` is True when the tool timed out or was killed: the device may be
    half-written (e.g. a partial mkfs), so the caller must not treat the failure as clean.
    """

    def __init__(self, message: str, device: str, command: str | None = None, *,
                 returncode: int | None = None, uncertain: bool = False) -> None:
        super().__init__(message)
        self.device = device
        self.command = command
        self.returncode = returncode
        self.uncertain = uncertain


class ToolNotFoundError(FormatError):
    """The external tool (blkid, mkfs.TYPE, fsck, resize2fs ...) is not installed."""


class RefuseToFormatError(FormatError):
    """The device holds something that is not a filesystem we would mount (a partition table,
    unknown data), or formatting was needed for a read-only mount. Nothing was written."""

    def __init__(self, device: str, found: str) -> None:
        super().__init__(f"refusing to format {device}: {found}", device)
        self.found = found


class FilesystemMismatchError(FormatError):
    """The device holds a filesystem of another type than requested (the kubelet's
    FilesystemMismatch). Nothing was fsck'd, mounted or written."""

    def __init__(self, device: str, requested: str, existing: str) -> None:
        super().__init__(f"{device} already contains a filesystem of type {existing} but fsType {requested} "
                         f"was requested: refusing to fsck or mount it", device)
        self.requested = requested
        self.existing = existing


class UnformattedReadOnlyError(RefuseToFormatError):
    """A blank device was to be mounted read-only: it would have to be formatted, which a
    read-only request forbids."""

    def __init__(self, device: str) -> None:
        super().__init__(device, "it has no filesystem and the mount is read-only")


@dataclass(frozen=True, slots=True)
class DiskFormat:
    """What ``blkid -p`` found: a filesystem type, a partition table type, or neither (blank)."""

    fs_type: str | None
    pt_type: str | None

    @property
    def blank(self) -> bool:
        return self.fs_type is None and self.pt_type is None


def _run(argv: Sequence[str], device: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a tool; errors (missing, timed out) name the command and the device."""
    cmd = os.path.basename(argv[0])
    try:
        run, preexec = helper_command(argv)
        return subprocess.run(
            run, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
            preexec_fn=preexec, timeout=timeout, env={**os.environ, "LC_ALL": "C"},
        )
    except FileNotFoundError:
        raise ToolNotFoundError(f"{cmd} not found (needed for {device})", device, cmd) from None
    except subprocess.TimeoutExpired:
        raise FormatError(f"{cmd} on {device} timed out after {timeout:g}s", device, cmd, uncertain=True) from None


def _detail(proc: subprocess.CompletedProcess[str]) -> str:
    text = (proc.stderr or proc.stdout or "").strip()
    return text[-1000:] if text else "no output"


def probe(device: str) -> DiskFormat:
    """What is on `device`, by low-level probing (``blkid -p``, bypassing the blkid cache).

    Exit 2 means blkid found nothing it knows, which is *not* proof of a blank device (it also
    means blkid could not open it, and unknown data looks like nothing): deciding to format is
    `mount_utils.blank.inspect_device`'s job, never this function's. Exit 0 with neither TYPE nor PTTYPE is reported as
    ``fs_type="unknown"`` so callers never take it for blank. Anything else raises FormatError.
    """
    # blkid also exits 2 for a missing path: check first, or a vanished device looks blank.
    try:
        os.stat(device)
    except OSError as e:
        raise FormatError(f"cannot probe {device}: {e.strerror}", device, "blkid") from None
    proc = _run(["blkid", "-p", "-s", "TYPE", "-s", "PTTYPE", "-o", "export", device], device, PROBE_TIMEOUT)
    if proc.returncode == BLKID_NOTHING_FOUND:
        return DiskFormat(None, None)
    if proc.returncode != 0:
        # Killed by a signal (negative status) says nothing about the device: retry it.
        raise FormatError(f"blkid failed on {device} (exit {proc.returncode}): {_detail(proc)}", device, "blkid",
                          returncode=proc.returncode, uncertain=proc.returncode < 0)
    values = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    fs_type = values.get("TYPE") or None
    pt_type = values.get("PTTYPE") or None
    if fs_type is None and pt_type is None:
        fs_type = "unknown"
    return DiskFormat(fs_type, pt_type)


def _mkfs(device: str, fs_type: str, format_options: Sequence[str]) -> None:
    argv = [f"mkfs.{fs_type}", *_MKFS_ARGS.get(fs_type, []), *format_options, device]
    log.info("formatting %s as %s", device, fs_type)
    proc = _run(argv, device, MKFS_TIMEOUT)
    if proc.returncode != 0:
        raise FormatError(f"mkfs.{fs_type} failed on {device} (exit {proc.returncode}): {_detail(proc)}",
                          device, f"mkfs.{fs_type}", returncode=proc.returncode, uncertain=proc.returncode < 0)


def _fsck(device: str) -> None:
    """``fsck -a``: repair what is safe to repair before mounting read-write."""
    try:
        proc = _run(["fsck", "-a", device], device, FSCK_TIMEOUT)
    except ToolNotFoundError:
        log.warning("fsck not found, mounting %s without a check", device)
        return
    rc = proc.returncode
    if rc == 0:
        return
    if rc < 0:
        raise FormatError(f"fsck on {device} was killed by signal {-rc}", device, "fsck",
                          returncode=rc, uncertain=True)
    if rc & FSCK_ERRORS_UNCORRECTED:
        raise FormatError(f"filesystem on {device} has errors fsck could not correct (fsck exit {rc}): "
                          f"{_detail(proc)}", device, "fsck", returncode=rc)
    if rc & ~(FSCK_ERRORS_CORRECTED | FSCK_REBOOT_ADVISED):
        # Operational errors (8, 16, 32, 128): like k8s, log and let the mount decide.
        log.warning("fsck -a on %s exited %d, mounting anyway: %s", device, rc, _detail(proc))
    else:
        log.info("fsck -a corrected errors on %s (exit %d)", device, rc)


def _device_identity(device: str, sysfs_root: str) -> dict[str, str] | None:
    """What names this device *instance*: a loop device re-attached, or a disk replaced, gets
    a new ``diskseq``; a reboot a new boot id. None when the kernel does not say (no diskseq)."""
    try:
        st = os.stat(device)
        dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        with open(os.path.join(sysfs_root, "dev", "block", dev, "diskseq")) as f:
            diskseq = f.read().strip()
        with open(BOOT_ID_PATH) as f:
            boot_id = f.read().strip()
    except OSError:
        return None
    if not diskseq or not boot_id:
        return None
    return {"device": device, "dev": dev, "diskseq": diskseq, "boot_id": boot_id}


def _marker_matches(marker: str | None, device: str, sysfs_root: str) -> bool:
    if marker is None:
        return False
    try:
        with open(marker) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return False
    identity = _device_identity(device, sysfs_root)
    return identity is not None and isinstance(recorded, dict) and all(
        recorded.get(k) == v for k, v in identity.items())


def _write_marker(marker: str | None, device: str, fs_type: str, sysfs_root: str) -> None:
    """Record "we are formatting this blank device" before mkfs starts. The write reaches the
    kernel before mkfs runs, which is all a daemon crash needs; after a power loss the boot id
    no longer matches, so the marker needs no fsync."""
    if marker is None:
        return
    identity = _device_identity(device, sysfs_root)
    if identity is None:
        return
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({**identity, "fs_type": fs_type}, f)


def _remove_marker(marker: str | None) -> None:
    if marker is None:
        return
    try:
        os.unlink(marker)
    except FileNotFoundError:
        pass


def format_and_mount(
    mounter: Mounter,
    device: str,
    target: str,
    fs_type: str = "ext4",
    options: Sequence[str] = (),
    read_only: bool = False,
    *,
    sensitive_options: Sequence[str] = (),
    format_options: Sequence[str] = (),
    format_marker: str | None = None,
    sysfs_root: str = SYSFS_ROOT,
) -> bool:
    """Mount `device` on `target`, formatting it with `fs_type` first only if it is provably blank.

    Returns True if it formatted. Raises, touching nothing:

    * `mount_utils.blank.DeviceInUseError`: mounted anywhere (even at `target`: the caller
      adopts its own mount before calling this), held, swap, or open exclusively elsewhere;
    * `mount_utils.blank.DeviceOpenError`: it cannot be opened or read (the errno is named);
    * `RefuseToFormatError`: not blank and not a filesystem (partitions, a partition table,
      swap or another signature, non-zero data), or blank for a read-only mount;
    * `FilesystemMismatchError`: a filesystem of another type than `fs_type`;
    * `FormatError`: mkfs or fsck failed (``uncertain`` when killed or timed out).

    An ext* filesystem is checked with ``fsck -a`` before a read-write mount. `format_marker`
    (a file path) lets a call finish a format that a crash interrupted (module docstring).
    """
    if not fs_type:
        fs_type = "ext4"
    found = inspect_device(device, _mounts_of(mounter, device, sysfs_root), action="format, fsck or mount",
                           sysfs_root=sysfs_root)
    formatted = False
    resume = not found.blank and _marker_matches(format_marker, device, sysfs_root)
    if found.blank or resume:
        if read_only:
            raise UnformattedReadOnlyError(device)
        if resume:
            log.warning("%s: redoing the format of this device that was interrupted (it was blank before; "
                        "found now: %s)", device, "; ".join(found.findings()))
        _write_marker(format_marker, device, fs_type, sysfs_root)
        _mkfs(device, fs_type, format_options)
        _remove_marker(format_marker)  # before the mount: once mounted, data may be written
        formatted = True
        mount_type = fs_type
    else:
        mount_type = _existing_filesystem(found, fs_type)
        if not read_only and mount_type in _EXT:
            _fsck(device)
    mount_options = list(options)
    if read_only and "ro" not in mount_options:
        mount_options.append("ro")
    mounter.mount(device, target, mount_type, mount_options, sensitive_options)
    return formatted


def _existing_filesystem(found: Inspection, fs_type: str) -> str:
    """The type of the filesystem to mount as it is, or the refusal saying what was found."""
    existing = found.filesystem
    if existing is None:
        raise RefuseToFormatError(found.device, "; ".join(found.findings()) or "it is not blank")
    if existing != fs_type:
        raise FilesystemMismatchError(found.device, fs_type, existing)
    return existing


def resize_filesystem(device: str, mount_path: str, fs_type: str) -> None:
    """Grow the filesystem on `device` (mounted at `mount_path`) to the device's size.

    ext*: ``resize2fs DEVICE``; xfs: ``xfs_growfs -d MOUNT_PATH``; btrfs:
    ``btrfs filesystem resize max MOUNT_PATH``. Growing to the current size is a no-op.
    """
    if fs_type in _EXT:
        argv = ["resize2fs", device]
    elif fs_type == "xfs":
        argv = ["xfs_growfs", "-d", mount_path]
    elif fs_type == "btrfs":
        argv = ["btrfs", "filesystem", "resize", "max", mount_path]
    else:
        raise FormatError(f"resizing {fs_type} on {device} is not supported", device)
    proc = _run(argv, device, RESIZE_TIMEOUT)
    if proc.returncode != 0:
        raise FormatError(f"{argv[0]} failed on {device} (exit {proc.returncode}): {_detail(proc)}",
                          device, argv[0], returncode=proc.returncode, uncertain=proc.returncode < 0)


def _mounts_of(mounter: Mounter, device: str, sysfs_root: str):
    """The mounts that may be of `device` or of one of its partitions (whose major number may
    differ: extended partitions are 259): only those lines of the table are parsed. The whole
    table when the device cannot be stat'ed (the inspection then reports why)."""
    try:
        rdev = os.stat(device).st_rdev
    except OSError:
        return mounter.mount_table()
    dev = (os.major(rdev), os.minor(rdev))
    majors = {dev[0]} | {p.dev[0] for p in partitions(dev, sysfs_root) if p.dev is not None}
    device_mounts = getattr(mounter, "device_mounts", None)
    return device_mounts(majors) if callable(device_mounts) else mounter.mount_table()
