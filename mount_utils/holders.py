"""Who holds a path: the processes that keep a directory or a mount point busy.

An unmount that fails with EBUSY, or a directory we are asked to delete while a process still
works in it, must not be forced (no lazy unmount, no ``rm -rf`` under a running process): the
operator needs to know *who* holds it. ``find_holders`` answers with the processes whose
cwd, root, an open file or a memory mapping lies below the path, and, for a mount point,
whose open files are on that very mount (the ``mnt_id`` in ``/proc/PID/fdinfo``) or whose
mappings are on its filesystem when no other mount shows that filesystem.

Only ``/proc`` is read (readlink of the magic links, fdinfo, maps) and the mount table: the
holders' files are never stat'ed, so a dead NFS server elsewhere on the host cannot hang the
scan. psutil lists the processes and names them. The scan is bounded in time and in the
number of holders reported, because it runs on an operation worker and a host may have
thousands of processes; processes that exit mid-scan are skipped. Our own process is never a
holder: the daemon opens directories below a path to remove them safely.

Paths are compared as the kernel prints them for each process, i.e. in that process's mount
namespace and root; a process in another namespace is found through the mount ID only.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from mount_utils.mountinfo import MountTable

# At most this many holders are reported: enough to act on, small enough for status output.
DEFAULT_MAX_HOLDERS = 10
# The scan stops after this long. A few hundred processes take a few milliseconds; the bound is
# for hosts with thousands, where a worker must not stall for seconds.
DEFAULT_DEADLINE_SECONDS = 1.0
# What one holder holds, at most (a process with many open files below the path).
MAX_HOLDS_PER_PROCESS = 4
# readlink of an fd that is no file on any mount we could be asked about.
_PSEUDO_PREFIXES = ("socket:", "pipe:", "anon_inode:", "/dev/pts/", "/dev/null")
_DELETED = " (deleted)"


@dataclass(frozen=True)
class Holder:
    """One process that holds the path: ``holds`` says what (``cwd /x``, ``open file /x/f``)."""

    pid: int
    command: str
    holds: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"pid": self.pid, "command": self.command, "holds": list(self.holds)}

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command}): {', '.join(self.holds)}"


@dataclass
class HolderScan:
    """The result of a scan: ``complete`` is False when it stopped at its deadline or its cap,
    so an empty ``holders`` then does not prove that nobody holds the path."""

    holders: list[Holder] = field(default_factory=list)
    complete: bool = True
    scanned: int = 0


def _below(candidate: str, path: str) -> bool:
    if candidate.endswith(_DELETED):
        candidate = candidate[: -len(_DELETED)]
    return candidate == path or candidate.startswith(path + "/") or path == "/"


def _readlink(p: str) -> str | None:
    try:
        return os.readlink(p)
    except OSError:
        return None


def _fd_mount_id(proc: str, fd: str) -> int | None:
    try:
        with open(f"{proc}/fdinfo/{fd}", "rb") as f:
            for line in f.read().split(b"\n"):
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _mount_facts(path: str, table: MountTable | None) -> tuple[int | None, tuple[int, int] | None]:
    """(mount ID, device) of the mount at ``path`` when it is a mount point; the device only
    when no other mount shows the same filesystem (else a device match would name users of
    the other mounts, which do not keep this one busy)."""
    try:
        table = table if table is not None else MountTable.read()
    except OSError:
        return None, None
    top = table.top(path)
    if top is None:
        return None, None
    device = top.device if len(table.by_device(top.major, top.minor)) == 1 else None
    return top.mount_id, device


def _maps_holds(proc: str, path: str, device: tuple[int, int] | None, out: list[str]) -> None:
    try:
        with open(f"{proc}/maps", "rb") as f:
            data = f.read()
    except OSError:
        return
    seen: set[str] = set()
    for raw in data.split(b"\n"):
        parts = raw.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith(b"/"):
            continue
        name = os.fsdecode(parts[5])
        if name in seen:
            continue
        if _below(name, path):
            seen.add(name)
            out.append(f"mapping {name}")
        elif device is not None:
            try:
                major, minor = (int(x, 16) for x in parts[3].split(b":"))
            except ValueError:
                continue
            if (major, minor) == device and parts[4] != b"0":
                seen.add(name)
                out.append(f"mapping {name} (same filesystem)")
        if len(out) >= MAX_HOLDS_PER_PROCESS:
            return


def _process_holds(pid: int, path: str, mount_id: int | None, device: tuple[int, int] | None) -> list[str]:
    proc = f"/proc/{pid}"
    holds: list[str] = []
    for what in ("cwd", "root"):
        target = _readlink(f"{proc}/{what}")
        if target is not None and _below(target, path) and not (what == "root" and path == "/"):
            holds.append(f"{what} {target}")
    try:
        fds = os.listdir(f"{proc}/fd")
    except OSError:
        fds = []
    for fd in fds:
        if len(holds) >= MAX_HOLDS_PER_PROCESS:
            break
        target = _readlink(f"{proc}/fd/{fd}")
        if target is None or target.startswith(_PSEUDO_PREFIXES):
            continue
        if _below(target, path):
            holds.append(f"open file {target}")
        elif mount_id is not None and _fd_mount_id(proc, fd) == mount_id:
            holds.append(f"open file {target} (on the mount)")
    if len(holds) < MAX_HOLDS_PER_PROCESS:
        _maps_holds(proc, path, device, holds)
    return holds[:MAX_HOLDS_PER_PROCESS]


def scan_holders(
    path: str,
    *,
    max_holders: int = DEFAULT_MAX_HOLDERS,
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    exclude_pids: set[int] | None = None,
    table: MountTable | None = None,
) -> HolderScan:
    """The processes that hold ``path`` (an absolute path), with whether the scan finished.

    ``table`` is the mount table to find ``path``'s mount in (read from /proc when None).
    """
    import psutil  # only when a volume is busy: not among the daemon's start-up imports (~7 ms)

    path = os.path.normpath(os.path.abspath(path))
    excluded = {os.getpid()} | (exclude_pids or set())
    mount_id, device = _mount_facts(path, table)
    scan = HolderScan()
    stop_at = time.monotonic() + deadline_seconds
    for pid in psutil.pids():
        if pid in excluded:
            continue
        if time.monotonic() > stop_at or len(scan.holders) >= max_holders:
            scan.complete = False
            break
        scan.scanned += 1
        holds = _process_holds(pid, path, mount_id, device)
        if not holds:
            continue
        try:
            command = psutil.Process(pid).name()
        except psutil.Error:
            continue  # gone (or a zombie) since: it holds nothing any more
        scan.holders.append(Holder(pid, command, tuple(holds)))
    return scan


def find_holders(path: str, **kwargs) -> list[Holder]:
    """The processes that hold ``path`` (see ``scan_holders`` for the bounds)."""
    return scan_holders(path, **kwargs).holders


def describe_holders(holders: list[Holder] | tuple[Holder, ...]) -> str:
    """``pid 12 (sleep): cwd /x; pid 13 (cat): open file /x/f`` for messages and logs."""
    return "; ".join(str(h) for h in holders)
