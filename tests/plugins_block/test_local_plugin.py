"""The local PV plugin against real directories, loop devices, mkfs and mounts."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from mount_utils.mountinfo import MountTable
from operation_executor.errors import FinalError, TransientError, WaitingError
from operation_executor.types import PodRef, VolumeSpec
from tests.fixtures_mounts import require_tools, sha256_of, write_mbr
from volumemanager.manifests.models import LocalSource
from volumemanager.plugins.local import LocalPlugin

pytestmark = pytest.mark.timeout(60)

POD_A = PodRef(uid="aaaaaaaa-0000-4000-8000-000000000001", namespace="default", name="a")
POD_B = PodRef(uid="bbbbbbbb-0000-4000-8000-000000000002", namespace="default", name="b")


def local_spec(path: str, *, mode: str = "Filesystem", read_only: bool = False, fs_type: str | None = None,
               options=(), name: str = "pv-local") -> VolumeSpec:
    return VolumeSpec(name=name, plugin_name=LocalPlugin.name, source=LocalSource(path=path, fs_type=fs_type),
                      read_only=read_only, volume_mode=mode, mount_options=tuple(options), pv_name=name)


def top_mount(path: str):
    return MountTable.read().top(os.path.realpath(path))


def blkid(dev: str, tag: str) -> str:
    proc = subprocess.run(["blkid", "-p", "-s", tag, "-o", "value", dev], capture_output=True, text=True)
    return proc.stdout.strip()


# --- directory PVs ------------------------------------------------------------------------

def test_directory_pv_is_bind_mounted(plugin, host, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "hello").write_text("hi")
    spec = local_spec(str(src))
    assert not plugin.is_device_mountable(spec)
    assert plugin.wait_for_device(spec) is None and plugin.device_mount_path(spec) is None
    target = plugin.mount_path(spec, POD_A, "vol")
    assert target == os.path.join(host.root_dir, "pods", POD_A.uid, "volumes", "kubernetes.io~local-volume",
                                  "pv-local")
    plugin.set_up(spec, POD_A, "vol", None)
    plugin.set_up(spec, POD_A, "vol", None)  # idempotent: still one mount
    assert len(MountTable.read().at(os.path.realpath(target))) == 1
    assert open(os.path.join(target, "hello")).read() == "hi"
    with open(os.path.join(target, "from-pod"), "w") as f:
        f.write("x")
    assert (src / "from-pod").read_text() == "x"
    assert plugin.volume_stats(spec, target)["capacity_bytes"] > 0

    plugin.tear_down(spec, POD_A, "vol", target)
    assert not os.path.lexists(target)
    assert (src / "hello").read_text() == "hi" and (src / "from-pod").exists()
    plugin.tear_down(spec, POD_A, "vol", target)  # idempotent


def test_directory_pv_read_only(plugin, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    spec = local_spec(str(src), read_only=True)
    target = plugin.mount_path(spec, POD_A, "vol")
    plugin.set_up(spec, POD_A, "vol", None)
    assert top_mount(target).read_only
    with pytest.raises(OSError):
        open(os.path.join(target, "nope"), "w")
    plugin.tear_down(spec, POD_A, "vol", target)


def test_missing_directory_waits(plugin, tmp_path):
    missing = str(tmp_path / "not-yet")
    spec = local_spec(missing)
    with pytest.raises(WaitingError) as info:
        plugin.set_up(spec, POD_A, "vol", None)
    assert info.value.waiting_for == f"directory {missing}"
    assert not os.path.lexists(plugin.mount_path(spec, POD_A, "vol"))


def test_symlink_in_the_pod_path_is_refused(plugin, host, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pod_dir = os.path.join(host.root_dir, "pods", POD_A.uid)
    os.makedirs(pod_dir)
    os.symlink(elsewhere, os.path.join(pod_dir, "volumes"))
    spec = local_spec(str(src))
    with pytest.raises(FinalError) as info:
        plugin.set_up(spec, POD_A, "vol", None)
    assert info.value.code == "UNSAFE_PATH"
    assert os.listdir(elsewhere) == []
    assert not MountTable.read().under(os.path.realpath(tmp_path))


def test_path_kind_decided_before_it_exists(plugin):
    assert plugin.is_device_mountable(local_spec("/dev/vmr-not-attached-yet"))
    assert not plugin.is_device_mountable(local_spec("/srv/vmr-not-created-yet"))
    assert not plugin.is_device_mountable(local_spec("/dev/vmr-not-attached-yet", mode="Block"))


# --- block device PVs, Filesystem mode ----------------------------------------------------

def test_block_pv_waits_formats_mounts_and_keeps_data(plugin, host, pending_loop):
    require_tools("mkfs.ext4", "blkid")
    dev = pending_loop.path
    spec = local_spec(dev)
    assert plugin.is_device_mountable(spec)
    dmp = plugin.device_mount_path(spec)
    assert dmp == os.path.join(host.root_dir, "plugins", "kubernetes.io/local-volume", "mounts", "pv-local")

    with pytest.raises(WaitingError) as info:  # the node exists, nothing is attached
        plugin.wait_for_device(spec)
    assert info.value.waiting_for == f"device {dev}" and info.value.code == "DEVICE_NOT_READY"
    assert dev in info.value.message

    with pytest.raises(WaitingError):  # mount_device re-checks: blkid calls a detached loop "blank"
        plugin.mount_device(spec, dev, dmp)
    assert not os.path.lexists(dmp)

    pending_loop.attach()
    assert plugin.wait_for_device(spec) == dev
    plugin.mount_device(spec, dev, dmp)
    plugin.mount_device(spec, dev, dmp)  # idempotent
    assert top_mount(dmp).fs_type == "ext4"
    uuid = blkid(dev, "UUID")
    assert uuid

    paths = {}
    for pod in (POD_A, POD_B):
        plugin.set_up(spec, pod, "vol", dmp)
        paths[pod.uid] = plugin.mount_path(spec, pod, "vol")
    with open(os.path.join(paths[POD_A.uid], "kept"), "w") as f:
        f.write("survives")
    assert open(os.path.join(paths[POD_B.uid], "kept")).read() == "survives"

    with pytest.raises(FinalError) as busy:
        plugin.unmount_device(spec, dmp)
    assert busy.value.code == "STILL_IN_USE" and dmp in busy.value.message
    assert top_mount(dmp) is not None

    for pod in (POD_A, POD_B):
        plugin.tear_down(spec, pod, "vol", paths[pod.uid])
        assert not os.path.lexists(paths[pod.uid])
    plugin.unmount_device(spec, dmp)
    assert not os.path.lexists(dmp)
    plugin.unmount_device(spec, dmp)  # idempotent

    # Again: no reformat, the data is there.
    plugin.mount_device(spec, plugin.wait_for_device(spec), dmp)
    assert blkid(dev, "UUID") == uuid
    plugin.set_up(spec, POD_A, "vol", dmp)
    assert open(os.path.join(paths[POD_A.uid], "kept")).read() == "survives"
    plugin.tear_down(spec, POD_A, "vol", paths[POD_A.uid])
    plugin.unmount_device(spec, dmp)


def test_read_only_pod_view_and_mount_options(plugin, loop_device):
    spec = local_spec(loop_device.path, read_only=True, options=["noatime"])
    dmp = plugin.device_mount_path(spec)
    plugin.mount_device(spec, plugin.wait_for_device(spec), dmp)
    assert "noatime" in top_mount(dmp).mount_options
    assert not top_mount(dmp).read_only  # the global mount stays writable, like the kubelet's
    plugin.set_up(spec, POD_A, "vol", dmp)
    target = plugin.mount_path(spec, POD_A, "vol")
    assert top_mount(target).read_only
    plugin.tear_down(spec, POD_A, "vol", target)
    plugin.unmount_device(spec, dmp)


def test_xfs_when_asked(plugin, loop_device_factory):
    require_tools("mkfs.xfs")
    dev = loop_device_factory(320)  # xfs needs 300 MiB at least
    spec = local_spec(dev.path, fs_type="xfs")
    dmp = plugin.device_mount_path(spec)
    plugin.mount_device(spec, dev.path, dmp)
    assert top_mount(dmp).fs_type == "xfs"
    plugin.unmount_device(spec, dmp)


def test_invalid_mount_options_are_final(plugin, loop_device):
    spec = local_spec(loop_device.path, options=["noatime,suid"])
    with pytest.raises(FinalError) as info:
        plugin.mount_device(spec, loop_device.path, plugin.device_mount_path(spec))
    assert info.value.code == "INVALID_MOUNT_OPTIONS"
    assert blkid(loop_device.path, "TYPE") == ""  # nothing was formatted


def test_partitioned_device_is_refused_and_untouched(plugin, loop_device):
    write_mbr(loop_device.path, loop_device.size_bytes)
    before = sha256_of(loop_device.path)
    spec = local_spec(loop_device.path)
    dmp = plugin.device_mount_path(spec)
    with pytest.raises(FinalError) as info:
        plugin.mount_device(spec, loop_device.path, dmp)
    assert info.value.code == "REFUSE_TO_FORMAT"
    assert "partition table" in info.value.message and loop_device.path in info.value.message
    assert sha256_of(loop_device.path) == before
    assert top_mount(dmp) is None and not os.path.lexists(dmp)


def test_set_up_without_global_mount_is_transient(plugin, loop_device):
    spec = local_spec(loop_device.path)
    with pytest.raises(TransientError) as info:
        plugin.set_up(spec, POD_A, "vol", plugin.device_mount_path(spec))
    assert info.value.code == "DEVICE_NOT_MOUNTED"
    assert not os.path.lexists(plugin.mount_path(spec, POD_A, "vol"))


def _has_cap_sys_resource() -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 24))  # CAP_SYS_RESOURCE
    return False


@pytest.mark.parametrize("fs_type,size_mb", [("ext4", 64), ("xfs", 320)])
def test_expansion_after_the_device_grew(plugin, loop_device_factory, fs_type, size_mb):
    if fs_type == "ext4":
        require_tools("resize2fs")
        if not _has_cap_sys_resource():
            pytest.skip("online ext4 resize needs CAP_SYS_RESOURCE, which this process lacks "
                        "(resize2fs: Permission denied); xfs covers online expansion here")
    else:
        require_tools("mkfs.xfs", "xfs_growfs")
    loop_device = loop_device_factory(size_mb)
    spec = local_spec(loop_device.path, fs_type=fs_type)
    dmp = plugin.device_mount_path(spec)
    plugin.mount_device(spec, loop_device.path, dmp)
    plugin.set_up(spec, POD_A, "vol", dmp)
    target = plugin.mount_path(spec, POD_A, "vol")
    before = plugin.volume_stats(spec, target)["capacity_bytes"]
    assert plugin.expand(spec, loop_device.path, dmp) == size_mb << 20

    loop_device.grow(2 * size_mb)  # truncate + losetup -c
    assert plugin.expand(spec, loop_device.path, dmp) == (2 * size_mb) << 20
    after = plugin.volume_stats(spec, target)["capacity_bytes"]
    assert after > before + ((size_mb * 3 // 4) << 20), (before, after)
    assert plugin.expand(spec, loop_device.path, dmp) == (2 * size_mb) << 20  # again: nothing to do
    plugin.tear_down(spec, POD_A, "vol", target)
    plugin.unmount_device(spec, dmp)


# --- block device PVs, Block mode ---------------------------------------------------------

def test_block_mode_publishes_the_device_node(plugin, host, pending_loop):
    dev = pending_loop.path
    spec = local_spec(dev, mode="Block")
    assert not plugin.is_device_mountable(spec) and plugin.device_mount_path(spec) is None
    target = plugin.mount_path(spec, POD_A, "raw")
    assert target == os.path.join(host.root_dir, "pods", POD_A.uid, "volumeDevices",
                                  "kubernetes.io~local-volume", spec.name)
    with pytest.raises(WaitingError) as info:
        plugin.set_up(spec, POD_A, "raw", None)
    assert info.value.waiting_for == f"device {dev}"
    assert not os.path.lexists(target)

    loop = pending_loop.attach()
    before = sha256_of(dev)
    plugin.set_up(spec, POD_A, "raw", None)
    plugin.set_up(spec, POD_A, "raw", None)  # idempotent
    st = os.stat(target)
    assert stat.S_ISBLK(st.st_mode)
    assert st.st_rdev == os.stat(dev).st_rdev
    assert plugin.volume_stats(spec, target) == {"capacity_bytes": loop.size_bytes}
    assert plugin.expand(spec, dev, None) == loop.size_bytes
    assert sha256_of(dev) == before  # no filesystem was made or touched

    plugin.tear_down(spec, POD_A, "raw", target)
    assert not os.path.lexists(target)
    assert os.path.isdir(os.path.dirname(target))
    plugin.tear_down(spec, POD_A, "raw", target)  # idempotent


# --- an interrupted mkfs ------------------------------------------------------------------

def test_mkfs_killed_midway_is_uncertain(plugin, loop_device, tmp_path, monkeypatch):
    """A mkfs that dies by a signal may have written half a filesystem: uncertain, not failed.
    The killed mkfs is a stand-in executable first on PATH (the fault cannot be timed for real:
    mkfs of a loop device takes milliseconds)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "mkfs.ext4"
    fake.write_text("#!/bin/sh\nkill -KILL $$\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}")
    spec = local_spec(loop_device.path)
    dmp = plugin.device_mount_path(spec)
    from operation_executor.errors import UncertainError

    with pytest.raises(UncertainError) as info:
        plugin.mount_device(spec, loop_device.path, dmp)
    assert info.value.code == "FORMAT_UNCERTAIN" and loop_device.path in info.value.message
    assert top_mount(dmp) is None


def test_format_error_classification():
    from mount_utils.format import FormatError
    from volumemanager.plugins.local import _format_error_is_uncertain

    assert _format_error_is_uncertain(FormatError("mkfs.ext4 on /dev/loop3 timed out", "/dev/loop3", uncertain=True))
    assert not _format_error_is_uncertain(FormatError("mkfs.ext4 failed on /dev/loop3 (exit 1): bad", "/dev/loop3"))
