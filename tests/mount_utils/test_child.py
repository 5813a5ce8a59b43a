"""A helper command (mkfs) dies with the process that started it, so a SIGKILLed daemon
leaves no orphan writing to a device."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.fixtures_mounts import require_root

pytestmark = pytest.mark.timeout(30)


def test_mkfs_dies_with_its_parent(tmp_path):
    require_root()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    pidfile = tmp_path / "mkfs.pid"
    fake = bindir / "mkfs.ext4"
    fake.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    fake.chmod(0o755)
    dev = tmp_path / "disk.img"
    with open(dev, "wb") as f:
        f.truncate(8 << 20)
    code = (
        "import sys; from mount_utils.format import format_and_mount; from mount_utils.mounter import FakeMounter;"
        f"format_and_mount(FakeMounter(), {str(dev)!r}, {str(tmp_path / 'mnt')!r})"
    )
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    parent = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=os.getcwd())
    try:
        deadline = time.monotonic() + 10
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline, "the stand-in mkfs never started"
            time.sleep(0.02)
        child = int(pidfile.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 5
        while True:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            with open(f"/proc/{child}/stat") as f:
                if f.read().split()[2] == "Z":
                    break  # dead, waiting to be reaped by init
            assert time.monotonic() < deadline, "mkfs outlived the process that started it"
            time.sleep(0.02)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_helpers_start_through_setpriv_without_a_preexec_fn():
    """Issue 16: a helper is started by vfork through ``setpriv --pdeathsig KILL`` (a fork of
    the daemon cost ~6 ms a helper); without such a setpriv, as before, with a preexec_fn. A
    missing helper is FileNotFoundError either way, as starting it would be."""
    import shutil

    from mount_utils.child import die_with_parent, helper_command

    run, preexec = helper_command(["true", "x"])
    if shutil.which("setpriv") is None:
        assert preexec is die_with_parent and run[1:] == ["x"]
    else:
        assert preexec is None and run[:4] == [shutil.which("setpriv"), "--pdeathsig", "KILL", "--"]
        assert run[4:] == [shutil.which("true"), "x"]
        assert subprocess.run(run).returncode == 0
    with pytest.raises(FileNotFoundError):
        helper_command(["no-such-helper-anywhere"])
    with pytest.raises(FileNotFoundError):
        helper_command(["/nonexistent/mount"])
