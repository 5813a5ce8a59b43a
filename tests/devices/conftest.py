"""A real udevd for device-event tests, started and stopped by PID by the test itself.

Debian's ``udev`` package is installed but nothing runs it (no systemd here). The fixture runs
``/lib/systemd/systemd-udevd`` in the foreground as our child, so its PID is known without
guessing, and at teardown stops it (and any worker it forked) by PID and removes what it
created: ``/run/udev`` and the ``/dev/disk``, ``/dev/block``, ``/dev/char`` link trees, each only
if it did not exist before."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from volumemanager.devices import udevd_alive

UDEVD = "/lib/systemd/systemd-udevd"
UDEVD_START_TIMEOUT = 10.0
UDEVD_STOP_TIMEOUT = 10.0
CREATED_BY_UDEVD = ("/run/udev", "/dev/disk", "/dev/block", "/dev/char")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture
def udevd():
    if not os.path.exists(UDEVD):
        pytest.skip(f"systemd-udevd is not installed ({UDEVD} missing; Debian package udev)")
    if udevd_alive():
        pytest.skip("a udevd is already running on this host; not starting a second one")
    existed = {p: os.path.lexists(p) for p in CREATED_BY_UDEVD}
    proc = subprocess.Popen([UDEVD, "--resolve-names=never"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + UDEVD_START_TIMEOUT
        while not udevd_alive():
            if proc.poll() is not None:
                pytest.skip(f"systemd-udevd exited at once with status {proc.returncode}")
            if time.monotonic() > deadline:
                pytest.fail("systemd-udevd did not open /run/udev/control")
            time.sleep(0.05)
        yield proc
    finally:
        workers.update(p for p in _children(proc.pid) if _cmdline(p) == UDEVD)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(UDEVD_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(UDEVD_STOP_TIMEOUT)
        for pid in workers:  # udevd stops its workers itself; this is for a killed udevd
            try:
                if _cmdline(pid) == UDEVD:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for path in CREATED_BY_UDEVD:
            if not existed[path] and os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
