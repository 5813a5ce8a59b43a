"""The NFS plugin up to the point where this kernel stops us (it has no nfs filesystem):
the command line, the pre-mount checks with a fake server in a netns, idempotent set-up and
tear-down with real mounts, and bounded I/O against a really hung filesystem."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from mount_utils.mounter import LinuxMounter
from operation_executor.errors import FinalError, TransientError, UncertainError
from operation_executor.types import PodRef, VolumeSpec
from volumemanager.bounded_io import BoundedIOTimeout, bounded_stat, bounded_statvfs
from volumemanager.manifests.models import NFSSource
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.plugins.nfs import (
    NFSPlugin,
    build_mount_command,
    nfs_unsupported_reason,
)

pytestmark = pytest.mark.timeout(30)

POD = PodRef(uid="6b1d7e2c-0000-4000-8000-000000000001", namespace="default", name="web")


def nfs_spec(server: str, path: str = "/export", read_only: bool = False, options=()) -> VolumeSpec:
    return VolumeSpec(name="share", plugin_name="kubernetes.io/nfs",
                      source=NFSSource(server=server, path=path, read_only=read_only),
                      read_only=read_only, mount_options=tuple(options))


@pytest.fixture
def host(tmp_path):
    return DaemonPluginHost(root_dir=str(tmp_path / "root"), node_name="n1", mounter=LinuxMounter())


@pytest.fixture
def plugin(host):
    os.makedirs(host.root_dir)
    return NFSPlugin(host, connect_timeout=2.0, unmount_timeout=1.0, stat_timeout=0.5)


def _unmount_all(path: str) -> None:
    """Test cleanup that trusts only the kernel's table, not the code under test."""
    from mount_utils import syscalls as sc

    for _ in range(8):
        with open("/proc/self/mountinfo") as f:
            if not any(line.split()[4] == path for line in f):
                return
        sc.sys_umount(path, 0)


# --- command line -------------------------------------------------------------------------

def test_build_mount_command():
    assert build_mount_command("nfs.example", "/export/a", "/t") == [
        "mount", "-t", "nfs", "nfs.example:/export/a", "/t"]
    assert build_mount_command("10.0.0.5", "/e", "/t", ["vers=4.1", "ro", "hard"]) == [
        "mount", "-t", "nfs", "-o", "vers=4.1,ro,hard", "10.0.0.5:/e", "/t"]
    assert build_mount_command("fd00::5", "/e", "/t")[-2] == "[fd00::5]:/e"
    assert build_mount_command("[fd00::5]", "/e", "/t")[-2] == "[fd00::5]:/e"


@pytest.mark.parametrize("bad", ["ro,nosuid", "-oremount", "vers=4\n"])
def test_build_mount_command_refuses_smuggled_options(bad):
    with pytest.raises(ValueError):
        build_mount_command("s", "/e", "/t", [bad])


def test_mount_options_of_a_spec(plugin):
    assert plugin.mount_options(nfs_spec("s", options=["vers=4.2"])) == ("vers=4.2",)
    assert plugin.mount_options(nfs_spec("s", read_only=True, options=["hard"])) == ("hard", "ro")
    with pytest.raises(FinalError) as info:
        plugin.mount_options(nfs_spec("s", options=["hard,ro"]))
    assert info.value.code == "INVALID_MOUNT_OPTIONS" and "share" in info.value.message


def test_per_pod_volume_not_device_mountable(plugin, host):
    spec = nfs_spec("s")
    assert not plugin.is_device_mountable(spec)
    assert POD.uid in plugin.volume_id(spec, POD)
    assert plugin.mount_path(spec, POD, "data") == os.path.join(
        host.root_dir, "pods", POD.uid, "volumes", "kubernetes.io~nfs", "share")


# --- kernel support -----------------------------------------------------------------------

def test_this_kernel_has_no_nfs():
    with open("/proc/filesystems") as f:
        if any(line.split()[-1] in ("nfs", "nfs4") for line in f if line.strip()):
            pytest.skip("this kernel does have nfs; the 'unsupported' path cannot be shown with it")
    assert nfs_unsupported_reason() == "this kernel has no nfs filesystem (not in /proc/filesystems)"


def test_kernel_with_nfs_but_no_mount_helper(tmp_path):
    fake = tmp_path / "filesystems"
    fake.write_text("nodev\tsysfs\nnodev\tnfs\nnodev\tnfs4\n\text4\n")
    reason = nfs_unsupported_reason(str(fake))
    if shutil.which("mount.nfs") or os.path.exists("/sbin/mount.nfs"):
        assert reason is None
    else:
        assert reason == "mount.nfs is not installed (Debian package nfs-common)"


# --- set_up against a fake host -----------------------------------------------------------

def test_set_up_reachable_server_but_no_nfs_in_kernel(plugin, nfs_host, servers):
    if nfs_unsupported_reason() is None:
        pytest.skip("this host can mount NFS; the fake server cannot serve a real mount")
    servers("rpc")
    spec = nfs_spec(nfs_host.peer_ip)
    with pytest.raises(FinalError) as info:
        plugin.set_up(spec, POD, "data", None)
    assert info.value.code == "NFS_UNSUPPORTED"
    assert info.value.message in (
        "this kernel has no nfs filesystem (not in /proc/filesystems)",
        "mount.nfs is not installed (Debian package nfs-common)",
    )
    assert not os.path.lexists(plugin.mount_path(spec, POD, "data")), "nothing may be left behind"


def test_set_up_uses_the_port_mount_option(plugin, nfs_host, servers):
    if nfs_unsupported_reason() is None:
        pytest.skip("this host can mount NFS")
    servers("rpc", port=12049)
    with pytest.raises(FinalError) as info:  # got past the reachability check on port 12049
        plugin.set_up(nfs_spec(nfs_host.peer_ip, options=["port=12049"]), POD, "data", None)
    assert info.value.code == "NFS_UNSUPPORTED"


def test_set_up_unreachable_server_is_transient(plugin, nfs_host, servers):
    spec = nfs_spec(nfs_host.peer_ip)  # nothing listens
    with pytest.raises(TransientError) as info:
        plugin.set_up(spec, POD, "data", None)
    assert info.value.code == "NFS_UNREACHABLE" and "connection refused" in info.value.message
    assert not os.path.lexists(plugin.mount_path(spec, POD, "data"))


def test_set_up_hung_server_is_bounded(plugin, nfs_host, servers):
    servers("hang")
    start = time.monotonic()
    with pytest.raises(TransientError) as info:
        plugin.set_up(nfs_spec(nfs_host.peer_ip), POD, "data", None)
    assert info.value.code == "NFS_UNREACHABLE"
    assert time.monotonic() - start < 3.0


# --- idempotent set_up / tear_down with a real mount standing in for the NFS one ----------

def test_already_mounted_set_up_is_a_no_op_and_tear_down_unmounts(plugin, host):
    spec = nfs_spec("10.213.255.255")  # never contacted: the volume is already mounted
    target = plugin.mount_path(spec, POD, "data")
    os.makedirs(target)
    host.mounter.mount_tmpfs(target)
    try:
        plugin.set_up(spec, POD, "data", None)
        assert host.mounter.is_mount_point(target)
        stats = plugin.volume_stats(spec, target)
        assert stats and stats["capacity_bytes"] > 0
        plugin.tear_down(spec, POD, "data", target)
        assert not os.path.lexists(target)
        plugin.tear_down(spec, POD, "data", target)  # idempotent
    finally:
        _unmount_all(target)


def test_tear_down_never_mounted_dir(plugin):
    spec = nfs_spec("s")
    target = plugin.mount_path(spec, POD, "data")
    os.makedirs(target)
    plugin.tear_down(spec, POD, "data", target)
    assert not os.path.exists(target)


# --- a hung filesystem --------------------------------------------------------------------

def test_bounded_stat_of_a_hung_mount(hung_mount):
    path, _release = hung_mount
    start = time.monotonic()
    with pytest.raises(BoundedIOTimeout) as info:
        bounded_stat(path, 0.5)
    assert path in str(info.value)
    with pytest.raises(BoundedIOTimeout):
        bounded_statvfs(path, 0.5)
    assert time.monotonic() - start < 2.0


def test_tear_down_of_a_hung_mount_is_uncertain_not_stuck(plugin, hung_mount):
    path, release = hung_mount
    spec = nfs_spec("s")
    start = time.monotonic()
    assert plugin.volume_stats(spec, path) is None
    with pytest.raises(UncertainError) as info:
        plugin.tear_down(spec, POD, "data", path)
    assert info.value.code == "NFS_TIMEOUT" and path in info.value.message
    with pytest.raises(UncertainError) as again:  # the first worker is still blocked
        plugin.tear_down(spec, POD, "data", path)
    assert "still blocked" in again.value.message
    assert time.monotonic() - start < 4.0

    release()  # the "server" comes back as a dead connection: calls fail with ENOTCONN
    deadline = time.monotonic() + 10
    while True:
        try:
            plugin.tear_down(spec, POD, "data", path)
            break
        except UncertainError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert not os.path.lexists(path)


def test_set_up_over_a_hung_mount_is_uncertain_not_stuck(plugin, hung_mount_at):
    """After a restart the pod path may already hold an NFS mount whose server died: even the
    "is it mounted already?" check must not hang."""
    spec = nfs_spec("10.213.255.255")
    target = plugin.mount_path(spec, POD, "data")
    hung_mount_at(target)
    start = time.monotonic()
    with pytest.raises(UncertainError) as info:
        plugin.set_up(spec, POD, "data", None)
    assert info.value.code == "NFS_TIMEOUT" and target in info.value.message
    assert time.monotonic() - start < 2.0
