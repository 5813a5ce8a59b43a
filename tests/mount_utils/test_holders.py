"""find_holders: real child processes holding a directory by cwd, root, open file or mapping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mount_utils.holders import find_holders, scan_holders
from mount_utils.mounter import LinuxMounter

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def spawn():
    """Start a child (stdout piped; it prints a line once it holds what it should); every
    child is killed by its PID at teardown."""
    children: list[subprocess.Popen] = []

    def start(args: list[str], ready_line: bool = False, **kw) -> subprocess.Popen:
        p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, **kw)
        children.append(p)
        if ready_line:
            assert p.stdout.readline().strip() == "ready"
        return p

    yield start
    for p in children:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(5)


def _holder(path, pid: int):
    for _ in range(100):  # the child may not have reached its state yet
        found = [h for h in find_holders(str(path)) if h.pid == pid]
        if found:
            return found[0]
        time.sleep(0.02)
    return None


def test_cwd_below_the_path(tmp_path, spawn):
    d = tmp_path / "vol" / "sub"
    d.mkdir(parents=True)
    p = spawn(["sleep", "60"], cwd=d)
    h = _holder(tmp_path / "vol", p.pid)
    assert h is not None and h.command == "sleep"
    assert h.holds == (f"cwd {d}",)
    assert h.to_dict() == {"pid": p.pid, "command": "sleep", "holds": [f"cwd {d}"]}
    assert f"pid {p.pid} (sleep): cwd {d}" == str(h)
    # A sibling with a common prefix is not "below".
    assert not [x for x in find_holders(str(tmp_path / "vo")) if x.pid == p.pid]


def test_open_file(tmp_path, spawn):
    d = tmp_path / "vol"
    d.mkdir()
    f = d / "data.log"
    f.write_text("x")
    with open(f) as fh:
        p = spawn(["sleep", "60"], stdin=fh)
    h = _holder(d, p.pid)
    assert h is not None and h.command == "sleep"
    assert f"open file {f}" in h.holds


def test_mapping_only(tmp_path, spawn):
    d = tmp_path / "vol"
    d.mkdir()
    f = d / "mapped.bin"
    f.write_bytes(b"\0" * 4096)
    code = ("import mmap, sys, time\n"
            f"fh = open({str(f)!r}, 'r+b'); m = mmap.mmap(fh.fileno(), 0); fh.close()\n"
            "print('ready', flush=True); time.sleep(60)\n")
    p = spawn([sys.executable, "-c", code], ready_line=True, cwd="/")
    h = _holder(d, p.pid)
    assert h is not None
    # Python's mmap keeps a dup of the fd (trackfd=False needs 3.13), so the file shows
    # up open as well: the mapping is what this checks.
    assert f"mapping {f}" in h.holds


def test_chroot(tmp_path, spawn):
    d = tmp_path / "jail"
    d.mkdir()
    code = ("import os, time\n"
            f"os.chroot({str(d)!r}); os.chdir('/')\n"
            "print('ready', flush=True); time.sleep(60)\n")
    p = spawn([sys.executable, "-c", code], ready_line=True)
    h = _holder(d, p.pid)
    assert h is not None
    assert set(h.holds) == {f"root {d}", f"cwd {d}"}


def test_a_process_elsewhere_and_our_own_are_no_holders(tmp_path, spawn):
    d = tmp_path / "vol"
    d.mkdir()
    p = spawn(["sleep", "60"], cwd=tmp_path)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)  # as the daemon does to remove a tree safely
    try:
        pids = {h.pid for h in find_holders(str(d))}
    finally:
        os.close(fd)
    assert p.pid not in pids and os.getpid() not in pids


def test_open_file_on_a_busy_tmpfs_and_the_cap(mount_cleanup, spawn):
    mnt = mount_cleanup / "tmpfs"
    mnt.mkdir()
    mounter = LinuxMounter()
    mounter.mount_tmpfs(str(mnt), size_bytes=1 << 20)
    f = mnt / "f"
    f.write_text("data")
    with open(f) as fh:
        a = spawn(["sleep", "60"], stdin=fh)
    b = spawn(["sleep", "60"], cwd=mnt)
    assert _holder(mnt, a.pid) is not None and _holder(mnt, b.pid) is not None
    with pytest.raises(OSError):
        mounter.unmount(str(mnt))  # EBUSY: the holders are what keeps it
    capped = scan_holders(str(mnt), max_holders=1)
    assert len(capped.holders) == 1 and not capped.complete
    for child in (a, b):
        child.kill()
        child.wait(5)
    assert not [h for h in find_holders(str(mnt)) if h.pid in (a.pid, b.pid)]
    mounter.unmount(str(mnt))


def test_a_bounded_scan_stops_in_time(tmp_path):
    scan = scan_holders(str(tmp_path), deadline_seconds=0.0)
    assert not scan.complete and scan.holders == []
