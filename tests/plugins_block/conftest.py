"""Fixtures for the local PV plugin: a plugin host rooted in tmp_path with the real mounter,
and a loop device node that exists but has nothing attached yet (a device that "has not
arrived"), created with LOOP_CTL_ADD at a high index no other test uses."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess

import pytest

from mount_utils.mounter import LinuxMounter
from tests.fixtures_mounts import (  # noqa: F401  (fixtures)
    LoopDevice,
    loop_device,
    loop_device_factory,
    mount_cleanup,
    require_root,
    require_tools,
    unmount_all_under,
)
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.plugins.local import LocalPlugin

LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
#: Indexes well above the 8 preallocated loop devices and those `losetup -f` hands out.
FIRST_PRIVATE_LOOP = 200 + os.getpid() % 300


@pytest.fixture
def host(mount_cleanup):
    root = mount_cleanup / "root"
    root.mkdir()
    return DaemonPluginHost(root_dir=str(root), node_name="n1", mounter=LinuxMounter())


@pytest.fixture
def plugin(host):
    return LocalPlugin(host)


class PendingLoop:
    """A loop device node that exists with nothing attached; ``attach()`` makes it arrive."""

    def __init__(self, path: str, backing_file: str) -> None:
        self.path = path
        self.backing_file = backing_file
        self.attached: LoopDevice | None = None

    def attach(self) -> LoopDevice:
        subprocess.run(["losetup", self.path, self.backing_file], check=True, capture_output=True, timeout=30)
        self.attached = LoopDevice(self.path, self.backing_file)
        return self.attached


@pytest.fixture
def pending_loop(tmp_path):
    require_root()
    require_tools("losetup")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no /dev/loop-control: cannot create a loop device")
    backing = tmp_path / "pending.img"
    with open(backing, "xb") as f:
        f.truncate(64 << 20)
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    index = None
    try:
        for candidate in range(FIRST_PRIVATE_LOOP, FIRST_PRIVATE_LOOP + 50):
            try:
                index = fcntl.ioctl(ctl, LOOP_CTL_ADD, candidate)
                break
            except OSError as err:
                if err.errno != errno.EEXIST:
                    raise
        if index is None:
            pytest.skip("no free loop index to create a private loop device")
        path = f"/dev/loop{index}"
        pending = PendingLoop(path, str(backing))
        try:
            yield pending
        finally:
            if pending.attached is not None:
                unmount_all_under(tmp_path)
                pending.attached.detach()
            for _ in range(50):
                try:
                    fcntl.ioctl(ctl, LOOP_CTL_REMOVE, index)
                    break
                except OSError as err:
                    if err.errno != errno.EBUSY:
                        break
                    import time
                    time.sleep(0.1)
    finally:
        os.close(ctl)
