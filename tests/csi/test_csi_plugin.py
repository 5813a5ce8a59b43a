"""CSIPlugin driven directly (mount_device -> set_up -> tear_down -> unmount_device) against the
real csi-loop plugin process on real loop devices, with the kubelet-compatible on-disk layout."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from operation_executor.errors import FinalError, UncertainError, WaitingError
from operation_executor.types import BLOCK, PodRef, SecretRef, VolumeSpec
from volumemanager.csi.registration import probe_driver
from volumemanager.csi.registry import DriverRegistry
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.plugins.csi import CSIPlugin, attachment_id, inline_volume_handle

try:
    from mount_utils.mounter import LinuxMounter
except ImportError:  # mount_utils still being written: the plugin falls back to mountinfo
    LinuxMounter = None  # type: ignore[assignment,misc]

try:
    from volumemanager.manifests.models import CSISource
except ImportError:
    CSISource = None  # type: ignore[assignment,misc]

DRIVER = "csi-loop.test"
POD = PodRef(uid="11111111-2222-3333-4444-555555555555", namespace="default", name="web")
POD2 = PodRef(uid="99999999-2222-3333-4444-555555555555", namespace="default", name="web2")
SECRET_VALUE = "s3cr3t-value"


def csi_source(handle: str | None, **kw):
    fields = dict(
        driver=kw.pop("driver", DRIVER), volume_handle=handle, fs_type=kw.pop("fs_type", "ext4"),
        volume_attributes=kw.pop("volume_attributes", {"size": "64Mi"}), read_only=kw.pop("read_only", False),
        node_stage_secret_ref=kw.pop("node_stage_secret_ref", None),
        node_publish_secret_ref=kw.pop("node_publish_secret_ref", None),
        node_expand_secret_ref=kw.pop("node_expand_secret_ref", None),
    )
    assert not kw, kw
    if CSISource is not None:
        return CSISource(**fields)
    from types import SimpleNamespace

    return SimpleNamespace(**fields)


def pv_spec(handle: str = "vol1", mode: str = "Filesystem", **kw) -> VolumeSpec:
    return VolumeSpec(
        name=f"pv-{handle}", plugin_name="kubernetes.io/csi", source=csi_source(handle, **kw),
        volume_mode=mode, access_modes=("ReadWriteOnce",), pv_name=f"pv-{handle}",
        capacity_bytes=64 * 1024 * 1024,
    )


def mountinfo() -> dict[str, tuple[int, int]]:
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            major, minor = fields[2].split(":")
            out[fields[4]] = (int(major), int(minor))
    return out


class Env:
    def __init__(self, tmp_path: Path, secrets: dict | None = None) -> None:
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.secrets = secrets or {}
        mounter = LinuxMounter() if LinuxMounter is not None else None
        self.host = DaemonPluginHost(
            root_dir=str(self.root), node_name="node1", mounter=mounter,
            secret_lookup=lambda ref: self.secrets.get((ref.namespace, ref.name)),
        )
        self.registry = DriverRegistry()
        self.plugin = CSIPlugin(self.host, self.registry)

    def register(self, loop_plugin) -> None:
        probe_driver(self.registry, loop_plugin.driver_name, loop_plugin.endpoint, "static")

    def stage(self, spec: VolumeSpec) -> str:
        assert self.plugin.wait_for_device(spec) is None
        dmp = self.plugin.device_mount_path(spec)
        self.plugin.mount_device(spec, None, dmp)
        return dmp

    def publish(self, spec: VolumeSpec, pod: PodRef = POD) -> str:
        self.plugin.set_up(spec, pod, spec.name, self.plugin.device_mount_path(spec))
        return self.plugin.mount_path(spec, pod, spec.name)


@pytest.fixture
def env(tmp_path: Path, csi_loop):
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.registry.close()


def test_paths_and_ids(env: Env) -> None:
    spec = pv_spec("vol1")
    sha = hashlib.sha256(b"vol1").hexdigest()
    assert env.plugin.is_device_mountable(spec)
    assert env.plugin.volume_id(spec, POD) == f"kubernetes.io/csi/{DRIVER}^vol1"
    assert env.plugin.device_mount_path(spec) == str(env.root / "plugins/kubernetes.io/csi" / DRIVER / sha / "globalmount")
    assert env.plugin.mount_path(spec, POD, "data") == str(
        env.root / "pods" / POD.uid / "volumes/kubernetes.io~csi/pv-vol1/mount"
    )
    block = pv_spec("vol1", mode=BLOCK)
    assert env.plugin.mount_path(block, POD, "data") == str(
        env.root / "pods" / POD.uid / "volumeDevices/kubernetes.io~csi/pv-vol1"
    )
    inline = VolumeSpec(name="scratch", plugin_name="kubernetes.io/csi", source=csi_source(None))
    assert not env.plugin.is_device_mountable(inline)
    assert env.plugin.device_mount_path(inline) is None
    assert env.plugin.volume_id(inline, POD) == f"kubernetes.io/csi/{POD.uid}-scratch"


def test_waits_for_unregistered_driver(env: Env) -> None:
    spec = pv_spec("vol1")
    with pytest.raises(WaitingError) as exc:
        env.plugin.wait_for_device(spec)
    assert exc.value.code == "DRIVER_NOT_REGISTERED"
    assert exc.value.waiting_for == f"CSI driver {DRIVER}"
    with pytest.raises(WaitingError):
        env.plugin.set_up(spec, POD, "data", env.plugin.device_mount_path(spec))
    assert not (env.root / "pods").exists()


@pytest.mark.timeout(90)
def test_stage_publish_unpublish_unstage_keeps_data(env: Env, csi_loop) -> None:
    loop_plugin = csi_loop()
    env.register(loop_plugin)
    spec = pv_spec("vol1")

    dmp = env.stage(spec)
    mounts = mountinfo()
    assert dmp in mounts, "NodeStageVolume mounted the global mount"
    [loop] = loop_plugin.loop_devices()
    loop_rdev = os.stat(loop).st_rdev
    assert mounts[dmp] == (os.major(loop_rdev), os.minor(loop_rdev))
    vol_data = json.loads((Path(dmp).parent / "vol_data.json").read_text())
    assert vol_data == {"volumeHandle": "vol1", "driverName": DRIVER}
    assert stat.S_IMODE(os.stat(dmp).st_mode) == 0o750 or dmp in mounts

    target = env.publish(spec)
    assert target in mountinfo(), "NodePublishVolume bind-mounted into the pod dir"
    pod_data = json.loads((Path(target).parent / "vol_data.json").read_text())
    assert pod_data == {
        "specVolID": "pv-vol1", "volumeHandle": "vol1", "driverName": DRIVER, "nodeName": "node1",
        "attachmentID": attachment_id("vol1", DRIVER, "node1"), "volumeLifecycleMode": "Persistent",
    }
    publish = loop_plugin.calls("NodePublishVolume")[-1]
    assert publish["staging_target_path"] == dmp and publish["target_path"] == target
    (Path(target) / "hello.txt").write_text("kept across unpublish/unstage")

    # Idempotent: a second set_up / mount_device after a crash is fine.
    env.plugin.mount_device(spec, None, dmp)
    env.plugin.set_up(spec, POD, spec.name, dmp)

    env.plugin.tear_down(spec, POD, spec.name, target)
    assert target not in mountinfo()
    assert not Path(target).parent.exists(), "pod volume dir removed once empty"
    env.plugin.unmount_device(spec, dmp)
    assert dmp not in mountinfo()
    assert not Path(dmp).parent.exists(), "sha dir and vol_data.json removed"
    assert loop_plugin.loop_devices() == [], "NodeUnstageVolume detached the loop device"
    # Idempotent teardown.
    env.plugin.tear_down(spec, POD, spec.name, target)
    env.plugin.unmount_device(spec, dmp)

    dmp = env.stage(spec)
    target = env.publish(spec, POD2)
    assert (Path(target) / "hello.txt").read_text() == "kept across unpublish/unstage"
    env.plugin.tear_down(spec, POD2, spec.name, target)
    env.plugin.unmount_device(spec, dmp)
    assert len(loop_plugin.calls("NodeStageVolume")) == 3
    # The repeated unmount_device found no vol_data.json and no globalmount: like kubelet it
    # returns without calling the driver.
    assert len(loop_plugin.calls("NodeUnstageVolume")) == 2


@pytest.mark.timeout(90)
def test_two_pods_share_one_stage(env: Env, csi_loop) -> None:
    env.register(csi_loop())
    spec = pv_spec("shared")
    dmp = env.stage(spec)
    t1, t2 = env.publish(spec, POD), env.publish(spec, POD2)
    (Path(t1) / "f").write_text("from pod 1")
    assert (Path(t2) / "f").read_text() == "from pod 1"
    env.plugin.tear_down(spec, POD, spec.name, t1)
    assert (Path(t2) / "f").exists()
    env.plugin.tear_down(spec, POD2, spec.name, t2)
    env.plugin.unmount_device(spec, dmp)


@pytest.mark.timeout(90)
def test_no_stage_driver_gets_no_node_stage(env: Env, csi_loop) -> None:
    loop_plugin = csi_loop(no_stage=True)
    env.register(loop_plugin)
    spec = pv_spec("vol2")
    dmp = env.stage(spec)
    assert dmp not in mountinfo()
    assert Path(dmp).is_dir() and (Path(dmp).parent / "vol_data.json").exists()
    target = env.publish(spec)
    assert target in mountinfo()
    assert loop_plugin.calls("NodePublishVolume")[-1].get("staging_target_path") is None
    (Path(target) / "x").write_text("y")
    env.plugin.tear_down(spec, POD, spec.name, target)
    env.plugin.unmount_device(spec, dmp)
    assert not Path(dmp).parent.exists()
    assert loop_plugin.calls("NodeStageVolume") == [] and loop_plugin.calls("NodeUnstageVolume") == []
    assert loop_plugin.loop_devices() == []


@pytest.mark.timeout(90)
def test_block_mode_publishes_the_loop_device(env: Env, csi_loop) -> None:
    loop_plugin = csi_loop()
    env.register(loop_plugin)
    spec = pv_spec("blk", mode=BLOCK)
    dmp = env.stage(spec)
    target = env.publish(spec)
    [loop] = loop_plugin.loop_devices()
    st = os.stat(target)
    assert stat.S_ISBLK(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (os.major(os.stat(loop).st_rdev), os.minor(os.stat(loop).st_rdev))
    assert loop_plugin.calls("NodePublishVolume")[-1]["access_type"] == "block"
    with open(target, "r+b") as dev:
        dev.write(b"raw block data")
    env.plugin.tear_down(spec, POD, spec.name, target)
    assert not os.path.lexists(target)
    env.plugin.unmount_device(spec, dmp)
    assert loop_plugin.loop_devices() == []
    with open(loop_plugin.volumes_dir / "blk.img", "rb") as f:
        assert f.read(14) == b"raw block data"


@pytest.mark.timeout(90)
def test_read_only_publish(env: Env, csi_loop) -> None:
    env.register(csi_loop())
    spec = pv_spec("ro", read_only=True)
    dmp = env.stage(spec)
    target = env.publish(spec)
    with pytest.raises(OSError):
        (Path(target) / "nope").write_text("x")
    env.plugin.tear_down(spec, POD, spec.name, target)
    env.plugin.unmount_device(spec, dmp)


@pytest.mark.timeout(90)
def test_final_publish_error_removes_pod_dir_uncertain_keeps_it(env: Env, csi_loop) -> None:
    loop_plugin = csi_loop()
    env.register(loop_plugin)
    spec = pv_spec("vol3")
    dmp = env.stage(spec)
    loop_plugin.set_fault("NodePublishVolume", code="INTERNAL", message="nope", count=1)
    with pytest.raises(FinalError) as exc:
        env.publish(spec)
    assert exc.value.code == "INTERNAL"
    pod_dir = Path(env.plugin.mount_path(spec, POD, spec.name)).parent
    assert not pod_dir.exists()

    loop_plugin.set_fault("NodePublishVolume", code="ABORTED", count=1)
    with pytest.raises(UncertainError):
        env.publish(spec)
    assert (pod_dir / "vol_data.json").exists(), "an uncertain publish keeps its metadata for tear_down"
    target = env.publish(spec)
    env.plugin.tear_down(spec, POD, spec.name, target)
    assert not pod_dir.exists()
    env.plugin.unmount_device(spec, dmp)


@pytest.mark.timeout(90)
def test_final_stage_error_cleans_global_dir(env: Env, csi_loop) -> None:
    loop_plugin = csi_loop()
    env.register(loop_plugin)
    spec = pv_spec("vol4")
    loop_plugin.set_fault("NodeStageVolume", code="INVALID_ARGUMENT", count=1)
    with pytest.raises(FinalError):
        env.stage(spec)
    assert not Path(env.plugin.device_mount_path(spec)).parent.exists()


@pytest.mark.timeout(90)
def test_not_found_on_unpublish_and_unstage_counts_as_done(env: Env, csi_loop) -> None:
    loop_plugin = csi_loop()
    env.register(loop_plugin)
    spec = pv_spec("vol5")
    dmp = env.stage(spec)
    target = env.publish(spec)
    # The driver forgot the volume: the mount must still go, so unmount it for real first and
    # then let the driver answer NOT_FOUND.
    os.system(f"umount {target}")
    os.rmdir(target)
    loop_plugin.set_fault("NodeUnpublishVolume", code="NOT_FOUND", count=1)
    env.plugin.tear_down(spec, POD, spec.name, target)
    assert not Path(target).parent.exists()
    os.system(f"umount {dmp}")
    loop_plugin.set_fault("NodeUnstageVolume", code="NOT_FOUND", count=1)
    env.plugin.unmount_device(spec, dmp)
    assert not Path(dmp).parent.exists()


@pytest.mark.timeout(90)
def test_secrets_are_passed_and_missing_secret_waits(tmp_path: Path, csi_loop) -> None:
    env = Env(tmp_path)
    try:
        loop_plugin = csi_loop()
        env.register(loop_plugin)
        ref = SecretRef(namespace="default", name="creds")
        spec = pv_spec("sec", node_stage_secret_ref=ref, node_publish_secret_ref=ref)
        with pytest.raises(WaitingError) as exc:
            env.stage(spec)
        assert exc.value.message == "secret default/creds not found"
        assert loop_plugin.calls("NodeStageVolume") == []
        env.secrets[("default", "creds")] = {"password": SECRET_VALUE.encode()}
        dmp = env.stage(spec)
        target = env.publish(spec)
        assert loop_plugin.calls("NodeStageVolume")[-1]["secret_keys"] == 1
        assert loop_plugin.calls("NodePublishVolume")[-1]["secret_keys"] == 1
        env.plugin.tear_down(spec, POD, spec.name, target)
        env.plugin.unmount_device(spec, dmp)
        assert SECRET_VALUE not in (loop_plugin.state_dir / "calls.log").read_text()
    finally:
        env.registry.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("no_stage", [True, False])
def test_inline_ephemeral_volume(env: Env, csi_loop, no_stage: bool) -> None:
    loop_plugin = csi_loop(no_stage=no_stage)
    env.register(loop_plugin)
    spec = VolumeSpec(name="scratch", plugin_name="kubernetes.io/csi", source=csi_source(None))
    env.plugin.set_up(spec, POD, "scratch", None)
    target = env.plugin.mount_path(spec, POD, "scratch")
    assert target in mountinfo()
    handle = inline_volume_handle(POD.uid, "scratch")
    data = json.loads((Path(target).parent / "vol_data.json").read_text())
    assert data["volumeHandle"] == handle and data["volumeLifecycleMode"] == "Ephemeral"
    publish = loop_plugin.calls("NodePublishVolume")[-1]
    assert publish["volume_id"] == handle
    assert publish["volume_context"] == {
        "size": "64Mi",
        "csi.storage.k8s.io/ephemeral": "true",
        "csi.storage.k8s.io/pod.name": POD.name,
        "csi.storage.k8s.io/pod.namespace": POD.namespace,
        "csi.storage.k8s.io/pod.uid": POD.uid,
    }
    assert loop_plugin.calls("NodeStageVolume") == []
    stats = env.plugin.volume_stats(spec, target)
    assert stats["capacity_bytes"] > 0 and stats["inodes"] > 0
    env.plugin.tear_down(spec, POD, "scratch", target)
    assert not Path(target).parent.exists()
    assert loop_plugin.loop_devices() == []


@pytest.mark.timeout(90)
def test_expand_and_stats(env: Env, csi_loop) -> None:
    # xfs: online growth of a mounted ext4 (EXT4_IOC_RESIZE_FS) is refused with EPERM on this
    # kernel, xfs_growfs works. xfs needs >= 300 MiB; the backing file is sparse.
    if shutil.which("mkfs.xfs") is None or shutil.which("xfs_growfs") is None:
        pytest.skip("xfsprogs not installed")
    loop_plugin = csi_loop()
    env.register(loop_plugin)
    spec = pv_spec("grow", fs_type="xfs", volume_attributes={"size": "320Mi"})
    dmp = env.stage(spec)
    target = env.publish(spec)
    before = env.plugin.volume_stats(spec, target)
    assert before["capacity_bytes"] > 0 and before["inodes"] > 0
    bigger = dataclasses.replace(spec, capacity_bytes=640 * 1024 * 1024)
    assert env.plugin.expand(bigger, None, dmp) == 640 * 1024 * 1024
    assert loop_plugin.calls("NodeExpandVolume")[-1]["required_bytes"] == 640 * 1024 * 1024
    after = env.plugin.volume_stats(spec, target)
    assert after["capacity_bytes"] > before["capacity_bytes"] * 1.5
    env.plugin.tear_down(spec, POD, spec.name, target)
    env.plugin.unmount_device(spec, dmp)
