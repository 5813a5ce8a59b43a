"""One daemon per root dir: an exclusive ``flock`` on ``<root-dir>/state/daemon.lock``.

Why: two daemons on one root dir (a second start with another ``--socket`` or another config,
a test run pointed at a live node) each see the other's mounts as "found on disk, not desired"
and tear them down, deleting the data of every on-disk emptyDir. The admin socket only
guards against a second daemon on the *same* socket. The lock is taken before anything under
the root dir is read or changed, and the kernel drops it when the process dies however it
dies (SIGKILL, a crash), so a restart never finds a stale lock.
"""

from __future__ import annotations

import fcntl
import os

LOCK_NAME = "daemon.lock"


class RootDirInUseError(OSError):
    """Another live daemon holds the root dir. An OSError, so that start-up reports it as
    one line and exits 1 like the other start-up errors."""


def lock_path(root_dir: str) -> str:
    return os.path.join(root_dir, "state", LOCK_NAME)


def lock_root_dir(root_dir: str) -> int:
    """Take the root dir's lock for this process and write our pid into the lock file; return
    the lock's fd (keep it open: closing it releases the lock). ``RootDirInUseError`` naming
    the holder's pid when another process has it."""
    path = lock_path(root_dir)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        who = f"pid {holder}" if holder else "another process"
        raise RootDirInUseError(
            f"root dir {root_dir} is in use by another volumemanager daemon ({who} holds {path}); "
            "one daemon per root dir: stop it first, or give this one its own --root-dir") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def unlock_root_dir(fd: int) -> None:
    """Release the lock (at a clean stop). The file stays: removing it would race a starting
    daemon that has opened it but not locked it yet."""
    try:
        os.close(fd)
    except OSError:
        pass


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
