"""Is this block device provably blank, and if not, what is on it or who uses it?

Formatting destroys whatever a device holds, so "blank" has to be *proven*, never inferred
from a tool's failure: ``blkid -p`` exits 2 both for "nothing found" and for "could not open
the device" (EPERM, ENXIO, EACCES, ENOMEDIUM), and it only recognises what it has a prober
for (random bytes, text, or data only near the end of the device look like nothing to it).
So a device is blank only when all of these hold:

* we can open it ourselves, read-only and exclusively (``O_EXCL`` on a block device fails with
  EBUSY while it is mounted, held by device-mapper/md, used as swap, or opened exclusively by
  a running mkfs); any other failure to open or read it is an error naming the errno;
* its device number (or one of its partitions') is not in the mount table, it has no holders
  in sysfs, it is not an active swap area, and it has no partitions;
* neither ``blkid -p`` nor ``wipefs --no-act`` names any signature;
* its first and its last MiB read as zeros (through the descriptor we opened).

Every read is bounded (a hung device must not hang a worker for ever): the open and the reads
run in a helper thread with a deadline, which is abandoned (and closes its descriptor itself
when it eventually returns) if the deadline passes. The answer is an `Inspection` that says
what was found; the caller decides what to refuse. Nothing here writes to the device.
"""

from __future__ import annotations

import errno as errno_mod
import os
import stat
import subprocess
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from mount_utils.child import helper_command
from mount_utils.mountinfo import MountTable

#: How much of each end of the device must read as zeros.
EDGE_BYTES = 1 << 20
#: Opening a device and reading 2 MiB takes milliseconds; this long means a hung device.
READ_TIMEOUT = 30.0
#: blkid / wipefs read a few sectors.
TOOL_TIMEOUT = 30.0
SYSFS_ROOT = "/sys"
PROC_SWAPS = "/proc/swaps"

T = TypeVar("T")


class DeviceCheckError(Exception):
    """The device could not be inspected. ``uncertain`` is True when the check timed out or
    a tool was killed (retrying may succeed); otherwise retrying will not help by itself."""

    def __init__(self, message: str, device: str, *, uncertain: bool = False) -> None:
        super().__init__(message)
        self.device = device
        self.uncertain = uncertain


class DeviceOpenError(DeviceCheckError):
    """Opening or reading the device failed with `errno` (ENXIO, EACCES, EPERM, EIO ...)."""

    def __init__(self, device: str, err: int, action: str = "open") -> None:
        name = errno_mod.errorcode.get(err, str(err))
        super().__init__(f"cannot {action} {device}: {name} ({os.strerror(err)}); it is not "
                         f"treated as blank", device)
        self.errno = err


class DeviceInUseError(DeviceCheckError):
    """The device is mounted, held, used as swap, or open exclusively by someone else.
    ``users`` says by whom ("mounted at /x", "held by dm-0", ...)."""

    def __init__(self, device: str, users: Sequence[str], action: str) -> None:
        shown = "; ".join(users) if users else "it is open exclusively by another program (EBUSY)"
        super().__init__(f"{device} is in use ({shown}): refusing to {action} it", device)
        self.users = tuple(users)


@dataclass(frozen=True, slots=True)
class Inspection:
    """What one look at a device found. ``blank`` only when nothing at all was found."""

    device: str
    fs_type: str | None = None  # blkid TYPE (ext4, xfs, swap, ...)
    usage: str | None = None  # blkid USAGE (filesystem, other, raid, crypto)
    pt_type: str | None = None  # blkid PTTYPE (dos, gpt)
    signatures: tuple[str, ...] = ()  # "swap at offset 0xff6" (wipefs) or "blkid exit 8 ..."
    partitions: tuple[str, ...] = ()  # names of existing partitions (loop0p1, sda1)
    nonzero_at: int | None = None  # offset of the first non-zero byte in the first/last MiB
    size_bytes: int = 0
    extra: tuple[str, ...] = field(default=())  # anything else worth saying

    @property
    def blank(self) -> bool:
        return (self.fs_type is None and self.pt_type is None and not self.signatures and not self.partitions
                and self.nonzero_at is None)

    @property
    def filesystem(self) -> str | None:
        """The filesystem type when the device holds exactly a filesystem (not swap, raid,
        crypto, not partitioned), else None."""
        if (self.fs_type and self.pt_type is None and not self.partitions and not self.extra
                and self.usage in (None, "filesystem")):
            return self.fs_type
        return None

    def findings(self) -> list[str]:
        """What was found, most telling first, as phrases for a refusal message."""
        out: list[str] = []
        if self.partitions:
            out.append(f"it has partitions ({', '.join(self.partitions)})")
        if self.pt_type:
            out.append(f"it has a partition table ({self.pt_type})")
        if self.fs_type:
            kind = "a swap signature" if self.fs_type == "swap" else f"a {self.fs_type} signature"
            shown_usage = self.usage not in (None, "filesystem") and self.fs_type != "swap"
            out.append(f"it holds {kind}" + (f" (usage {self.usage})" if shown_usage else ""))
        for sig in self.signatures:
            if not self.fs_type or self.fs_type not in sig:
                out.append(f"it holds a signature: {sig}")
        if self.nonzero_at is not None:
            out.append(f"non-zero data at offset {self.nonzero_at}")
        out.extend(self.extra)
        return out


# --- bounded execution -----------------------------------------------------------------------

def _bounded(fn: Callable[[], T], timeout: float, what: str, device: str,
             on_abandoned: Callable[[T], None] | None = None) -> T:
    """Run `fn` in a helper thread; raise an uncertain DeviceCheckError after `timeout`.

    A thread stuck in the kernel cannot be killed, so it is abandoned; if it returns later,
    `on_abandoned` gets its result (to close a descriptor nobody will use)."""
    box: dict[str, object] = {}
    lock = threading.Lock()
    state = {"abandoned": False}

    def run() -> None:
        try:
            value = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = e
            return
        with lock:
            if state["abandoned"]:
                if on_abandoned is not None:
                    on_abandoned(value)  # type: ignore[arg-type]
                return
            box["value"] = value

    t = threading.Thread(target=run, name=f"blank-check {device}", daemon=True)
    t.start()
    t.join(timeout)
    with lock:
        if t.is_alive() or ("value" not in box and "error" not in box):
            state["abandoned"] = True
            raise DeviceCheckError(f"{what} {device} did not finish within {timeout:g}s (hung device?)",
                                   device, uncertain=True)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def open_exclusive(device: str, users: Callable[[], list[str]], action: str,
                   timeout: float = READ_TIMEOUT) -> int:
    """Open `device` read-only and exclusively; the caller closes the descriptor.

    EBUSY -> `DeviceInUseError` (``users()`` says who, for the message); any other errno ->
    `DeviceOpenError`; a hang -> uncertain `DeviceCheckError`."""
    def do_open() -> int:
        return os.open(device, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC | os.O_NONBLOCK)

    try:
        return _bounded(do_open, timeout, "opening", device, on_abandoned=_close_quietly)
    except OSError as e:
        if e.errno == errno_mod.EBUSY:
            raise DeviceInUseError(device, users(), action) from None
        raise DeviceOpenError(device, e.errno or errno_mod.EIO) from None


def first_nonzero(fd: int, size: int, device: str, edge: int = EDGE_BYTES,
                  timeout: float = READ_TIMEOUT) -> int | None:
    """Offset of the first non-zero byte within the first and last `edge` bytes of the open
    device (the whole device when it is smaller than two edges), or None when all are zero."""
    ranges = [(0, min(edge, size))]
    if size > edge:
        start = max(edge, size - edge)
        ranges.append((start, size - start))

    def read() -> int | None:
        for start, length in ranges:
            done = 0
            while done < length:
                chunk = os.pread(fd, min(length - done, 1 << 20), start + done)
                if not chunk:
                    raise OSError(errno_mod.EIO, f"short read at offset {start + done}")
                stripped = chunk.lstrip(b"\0")
                if stripped:
                    return start + done + len(chunk) - len(stripped)
                done += len(chunk)
        return None

    try:
        return _bounded(read, timeout, "reading", device)
    except OSError as e:
        raise DeviceOpenError(device, e.errno or errno_mod.EIO, "read") from None


# --- who uses the device ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Part:
    name: str
    dev: tuple[int, int] | None
    sysdir: str


def _sysfs_dir(dev: tuple[int, int], sysfs_root: str) -> str:
    return os.path.join(sysfs_root, "dev", "block", f"{dev[0]}:{dev[1]}")


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def partitions(dev: tuple[int, int], sysfs_root: str = SYSFS_ROOT) -> list[_Part]:
    """Partitions of whole disk `dev`: the sysfs subdirectories that have a ``partition`` file."""
    base = _sysfs_dir(dev, sysfs_root)
    out: list[_Part] = []
    for name in _listdir(base):
        sub = os.path.join(base, name)
        if not os.path.isfile(os.path.join(sub, "partition")):
            continue
        num: tuple[int, int] | None = None
        try:
            with open(os.path.join(sub, "dev")) as f:
                major, _, minor = f.read().strip().partition(":")
                num = (int(major), int(minor))
        except (OSError, ValueError):
            pass
        out.append(_Part(name, num, sub))
    return out


def _swap_devices(proc_swaps: str) -> list[tuple[tuple[int, int], str]]:
    found: list[tuple[tuple[int, int], str]] = []
    try:
        with open(proc_swaps) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        path = parts[0].replace("\\040", " ")
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            found.append(((os.major(st.st_rdev), os.minor(st.st_rdev)), path))
    return found


def device_users(device: str, dev: tuple[int, int], mounts: MountTable, *,
                 sysfs_root: str = SYSFS_ROOT, proc_swaps: str = PROC_SWAPS,
                 ignore_mount_points: Collection[str] = ()) -> list[str]:
    """Who uses `device` (number `dev`) or one of its partitions: mounts (by device number, so
    any path or bind mount counts), holders in sysfs (device-mapper, md, bcache), active swap.
    Mount points in `ignore_mount_points` (ours) are not counted."""
    ignore = {os.path.normpath(p) for p in ignore_mount_points}
    subjects: list[tuple[str, tuple[int, int] | None, str]] = [(device, dev, _sysfs_dir(dev, sysfs_root))]
    subjects += [(f"partition {p.name}", p.dev, p.sysdir) for p in partitions(dev, sysfs_root)]
    swaps = _swap_devices(proc_swaps)
    users: list[str] = []
    for label, num, sysdir in subjects:
        prefix = "" if label == device else f"{label} "
        if num is not None:
            points = [m.mount_point for m in mounts.by_device(*num) if m.mount_point not in ignore]
            if points:
                shown = ", ".join(points[:3]) + (f" and {len(points) - 3} more" if len(points) > 3 else "")
                users.append(f"{prefix}mounted at {shown}")
            for snum, spath in swaps:
                if snum == num:
                    users.append(f"{prefix}active swap ({spath})")
        holders = _listdir(os.path.join(sysdir, "holders"))
        if holders:
            users.append(f"{prefix}held by {', '.join(holders)}")
    return users


# --- signatures ----------------------------------------------------------------------------

def _run(argv: Sequence[str], device: str) -> subprocess.CompletedProcess[str]:
    cmd = os.path.basename(argv[0])
    try:
        run, preexec = helper_command(argv)
        return subprocess.run(
            run, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
            preexec_fn=preexec, timeout=TOOL_TIMEOUT, env={**os.environ, "LC_ALL": "C"},
        )
    except FileNotFoundError:
        raise DeviceCheckError(f"{cmd} not found (needed to inspect {device})", device) from None
    except subprocess.TimeoutExpired:
        raise DeviceCheckError(f"{cmd} on {device} timed out after {TOOL_TIMEOUT:g}s", device,
                               uncertain=True) from None


def _tool_failed(proc: subprocess.CompletedProcess[str], cmd: str, device: str) -> DeviceCheckError:
    text = (proc.stderr or proc.stdout or "").strip()[-500:] or "no output"
    return DeviceCheckError(f"{cmd} failed on {device} (exit {proc.returncode}): {text}", device,
                            uncertain=proc.returncode < 0)


def blkid_values(device: str) -> tuple[dict[str, str], list[str]]:
    """``blkid -p`` (low-level probe, no cache): its TYPE/USAGE/PTTYPE values, and extra
    findings (exit 8: several signatures, "ambivalent"). Exit 2 means nothing found, which
    we believe only because we opened the device ourselves first."""
    proc = _run(["blkid", "-p", "-o", "export", device], device)
    if proc.returncode == 2:
        return {}, []
    if proc.returncode == 8:
        return {}, [f"blkid found several signatures (ambivalent): {(proc.stderr or '').strip()[-300:]}"]
    if proc.returncode != 0:
        raise _tool_failed(proc, "blkid", device)
    values: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values, []


def wipefs_signatures(device: str) -> list[str]:
    """Every signature ``wipefs --no-act`` can name, as "TYPE at offset 0xN"."""
    proc = _run(["wipefs", "--no-act", "--noheadings", "--output", "TYPE,OFFSET", device], device)
    if proc.returncode != 0:
        raise _tool_failed(proc, "wipefs", device)
    found = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            found.append(f"{parts[0]} at offset {parts[1]}")
        elif parts:
            found.append(parts[0])
    return found


# --- the whole check -----------------------------------------------------------------------

def inspect_device(device: str, mounts: MountTable, *, action: str = "format",
                   sysfs_root: str = SYSFS_ROOT, proc_swaps: str = PROC_SWAPS,
                   ignore_mount_points: Collection[str] = (),
                   read_timeout: float = READ_TIMEOUT) -> Inspection:
    """Look at `device` without writing to it: raises `DeviceInUseError` when something uses
    it, `DeviceOpenError` when it cannot be opened or read, `DeviceCheckError` for a failed
    tool or a hang; otherwise says what it holds (`Inspection.blank` when nothing).

    A regular file (a disk image) gets the signature and zero checks only."""
    try:
        st = os.stat(device)
    except OSError as e:
        raise DeviceOpenError(device, e.errno or errno_mod.ENOENT, "stat") from None
    is_block = stat.S_ISBLK(st.st_mode)
    dev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if is_block else None

    def users() -> list[str]:
        if dev is None:
            return []
        return device_users(device, dev, mounts, sysfs_root=sysfs_root, proc_swaps=proc_swaps,
                            ignore_mount_points=ignore_mount_points)

    fd = open_exclusive(device, users, action, read_timeout)
    try:
        found_users = users()
        if found_users:
            raise DeviceInUseError(device, found_users, action)
        parts = tuple(p.name for p in partitions(dev, sysfs_root)) if dev is not None else ()
        size = os.lseek(fd, 0, os.SEEK_END) if is_block else st.st_size
        values, extra = blkid_values(device)
        signatures = tuple(wipefs_signatures(device))
        nonzero = first_nonzero(fd, size, device, timeout=read_timeout)
    finally:
        os.close(fd)
    return Inspection(device=device, fs_type=values.get("TYPE") or None, usage=values.get("USAGE") or None,
                      pt_type=values.get("PTTYPE") or None, signatures=signatures, partitions=parts,
                      nonzero_at=nonzero, size_bytes=size, extra=tuple(extra))


def check_not_in_use(device: str, mounts: MountTable, *, action: str,
                     sysfs_root: str = SYSFS_ROOT, proc_swaps: str = PROC_SWAPS,
                     ignore_mount_points: Collection[str] = (), timeout: float = READ_TIMEOUT) -> None:
    """Refuse (`DeviceInUseError`) a device that is mounted anywhere, held, swap, or open
    exclusively by another program, before it is fsck'd or mounted."""
    try:
        st = os.stat(device)
    except OSError as e:
        raise DeviceOpenError(device, e.errno or errno_mod.ENOENT, "stat") from None
    if not stat.S_ISBLK(st.st_mode):
        return
    dev = (os.major(st.st_rdev), os.minor(st.st_rdev))

    def users() -> list[str]:
        return device_users(device, dev, mounts, sysfs_root=sysfs_root, proc_swaps=proc_swaps,
                            ignore_mount_points=ignore_mount_points)

    fd = open_exclusive(device, users, action, timeout)
    os.close(fd)
    found_users = users()
    if found_users:
        raise DeviceInUseError(device, found_users, action)
