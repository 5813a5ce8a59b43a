"""Run a call that may block forever (stat of a hung NFS mount, umount of a dead server) with a
deadline.

A process stuck in the kernel on a dead NFS server cannot be interrupted (D state), so the only
way not to stall the reconciler is to run the call on a throw-away daemon thread and stop
*waiting* for it. The thread may stay blocked until the server comes back; that costs one
thread, not the daemon. Callers must treat a timeout as "unknown outcome".
"""

from __future__ import annotations

import os
import threading
from typing import Callable, TypeVar

T = TypeVar("T")


class BoundedIOTimeout(TimeoutError):
    """The call did not finish in time; it may still be running and may still succeed."""

    def __init__(self, what: str, timeout: float) -> None:
        super().__init__(f"{what} did not finish within {timeout:g}s")
        self.what = what
        self.timeout = timeout


def run_bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Return ``fn()``, re-raising its exception; raise ``BoundedIOTimeout`` naming ``what``
    when it has not returned within ``timeout`` seconds."""
    box: dict[str, object] = {}
    done = threading.Event()

    def worker() -> None:
        try:
            box["result"] = fn()
        except BaseException as err:  # handed to the caller below
            box["error"] = err
        finally:
            done.set()

    thread = threading.Thread(target=worker, name=f"bounded: {what}"[:60], daemon=True)
    thread.start()
    if not done.wait(timeout):
        raise BoundedIOTimeout(what, timeout)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def bounded_stat(path: str, timeout: float) -> os.stat_result:
    """``os.stat(path)`` that gives up after ``timeout`` seconds (``BoundedIOTimeout``)."""
    return run_bounded(lambda: os.stat(path), timeout, f"stat {path}")


def bounded_statvfs(path: str, timeout: float) -> os.statvfs_result:
    """``os.statvfs(path)`` that gives up after ``timeout`` seconds (``BoundedIOTimeout``)."""
    return run_bounded(lambda: os.statvfs(path), timeout, f"statvfs {path}")


def stats_from_statvfs(st: os.statvfs_result) -> dict[str, int]:
    """Capacity/usage in NodeGetVolumeStats terms. Used = blocks - free (root-reserved blocks
    count as used, as in df); available = what unprivileged users can still write."""
    frsize = st.f_frsize or st.f_bsize
    return {
        "capacity_bytes": st.f_blocks * frsize,
        "used_bytes": (st.f_blocks - st.f_bfree) * frsize,
        "available_bytes": st.f_bavail * frsize,
        "inodes": st.f_files,
        "inodes_used": st.f_files - st.f_ffree,
        "inodes_free": st.f_ffree,
    }
