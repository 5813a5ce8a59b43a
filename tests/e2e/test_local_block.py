"""Issue 3, end to end through the daemon: local PVs on real loop devices."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from tests.daemon_harness import pods_on_claim, wait_until
from tests.fixtures_mounts import require_root, require_tools, sha256_of, write_mbr
from tests.plugins_block.conftest import pending_loop  # noqa: F401 - fixture
from tests.fixtures_mounts import loop_device_factory  # noqa: F401 - fixture

pytestmark = [pytest.mark.timeout(120)]


def pv_manifest(name: str, dev: str, mode: str = "Filesystem", claim: str = "data", pods: tuple[str, ...] = ("app",)):
    docs = [f"""\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {name}}}
spec:
  volumeMode: {mode}
  local: {{path: {dev}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}, namespace: demo}}
spec: {{volumeName: {name}, volumeMode: {mode}}}
"""]
    return "---\n".join(docs + pods_on_claim(claim, pods))


@pytest.fixture(autouse=True)
def _root():
    require_root()
    require_tools("losetup", "blkid", "mkfs.ext4")


def row(d, pod: str) -> dict:
    return [v for v in d.status()["volumes"] if v["pod"] == pod][0]


def test_waits_for_device_then_mounts_and_never_reformats(daemon, pending_loop):
    daemon.write_manifest("pv.yaml", pv_manifest("pv1", pending_loop.path, pods=("app", "app2")))
    wait_until(lambda: row(daemon, "demo/app")["state"] == "waiting", what="waiting for the device")
    r = daemon.cli("explain", "demo/app", check=False)
    assert r.returncode == 1 and f"waiting for device {pending_loop.path}" in r.stdout
    pending_loop.attach()  # the device arrives: no sleep, the uevent wakes the volume
    assert daemon.cli("wait", "demo/app", "--timeout", "20").returncode == 0
    assert daemon.cli("wait", "demo/app2", "--timeout", "20").returncode == 0
    st = daemon.status()
    rows = {v["pod"]: v for v in st["volumes"]}
    global_mount = str(daemon.root / "plugins/kubernetes.io/local-volume/mounts/pv1")
    assert rows["demo/app"]["device_mount_path"] == global_mount
    by_path = {}
    for m in daemon.mounts():
        by_path.setdefault(m.mount_point, []).append(m)
    assert len(by_path[global_mount]) == 1, "two pods share one global mount"
    assert by_path[rows["demo/app"]["mount_path"]][0].fs_type == "ext4"
    with open(os.path.join(rows["demo/app"]["mount_path"], "data.txt"), "w") as f:
        f.write("precious")

    # Pods go away: pod mounts first, the global mount after the last pod, nothing left.
    (daemon.manifests / "pv.yaml").unlink()
    wait_until(lambda: not daemon.mounts(), 20, what="everything unmounted")
    wait_until(lambda: "unmount_device succeeded" in daemon.log(), what="the unstage to be logged")
    log = daemon.log()
    assert log.rfind("unmount_device succeeded") > log.rfind("unmount_volume succeeded")
    assert log.count("waiting: DEVICE_NOT_READY") < 20, "a waiting volume must not be retried in a loop"

    # And back: the same data, never re-formatted.
    daemon.write_manifest("pv.yaml", pv_manifest("pv1", pending_loop.path))
    assert daemon.cli("wait", "demo/app", "--timeout", "20").returncode == 0
    with open(os.path.join(row(daemon, "demo/app")["mount_path"], "data.txt")) as f:
        assert f.read() == "precious"


def test_partitioned_device_is_refused_untouched(daemon, loop_device_factory):
    loop = loop_device_factory(size_mb=16)
    write_mbr(loop.path)
    before = sha256_of(loop.path)
    daemon.write_manifest("pv.yaml", pv_manifest("pv2", loop.path))
    wait_until(lambda: row(daemon, "demo/app")["state"] == "error", 20, what="the refusal")
    r = row(daemon, "demo/app")
    assert r["error_code"] == "REFUSE_TO_FORMAT" and loop.path in r["last_error"]
    assert "REFUSE_TO_FORMAT" in daemon.cli("explain", "demo/app", check=False).stdout
    assert sha256_of(loop.path) == before
    assert not daemon.mounts()


def test_block_mode_pod_device_has_the_loop_major_minor(daemon, loop_device_factory):
    loop = loop_device_factory(size_mb=16)
    before = sha256_of(loop.path)
    daemon.write_manifest("pv.yaml", pv_manifest("pv3", loop.path, mode="Block"))
    assert daemon.cli("wait", "demo/app", "--timeout", "20").returncode == 0
    path = row(daemon, "demo/app")["mount_path"]
    assert "/volumeDevices/kubernetes.io~local-volume/" in path
    st_pod, st_dev = os.stat(path), os.stat(loop.path)
    assert stat.S_ISBLK(st_pod.st_mode) and st_pod.st_rdev == st_dev.st_rdev
    (daemon.manifests / "pv.yaml").unlink()
    wait_until(lambda: not daemon.mounts() and not os.path.exists(path), what="unpublished and removed")
    assert sha256_of(loop.path) == before, "Block mode touches no filesystem"


def test_online_expansion_when_the_device_grows(daemon, loop_device_factory):
    """ext4 cannot be grown online here (resize2fs needs CAP_SYS_RESOURCE, which this sandbox
    lacks), so this uses xfs (minimum size 300 MiB, sparse)."""
    require_tools("mkfs.xfs", "xfs_growfs")
    loop = loop_device_factory(size_mb=320)
    daemon.write_manifest("pv.yaml", pv_manifest("pv4", loop.path).replace(
        f"local: {{path: {loop.path}}}", f"local: {{path: {loop.path}, fsType: xfs}}"))
    assert daemon.cli("wait", "demo/app", "--timeout", "30").returncode == 0
    mount_path = row(daemon, "demo/app")["mount_path"]
    before = os.statvfs(mount_path)
    loop.grow(640)  # truncate + losetup -c: the kernel sends a change event
    wait_until(lambda: row(daemon, "demo/app").get("size_bytes") == 640 << 20, 20, what="the expansion in status")
    after = os.statvfs(mount_path)
    assert after.f_blocks * after.f_frsize > 1.8 * before.f_blocks * before.f_frsize
    assert "expanded online to" in daemon.cli("explain", "demo/app").stdout
