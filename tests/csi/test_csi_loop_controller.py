"""csi-loop's Controller service, driven as a separate process with a real gRPC client on real
loop devices: the spec's idempotency and error codes, attach before stage, expansion,
snapshots and restores, pagination, capacity and topology, fault knobs and restarts.

The daemon's controller side will be tried against drivers written elsewhere, so these tests
hold the reference plugin to the CSI spec, not to what is convenient for our own code."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest

from tests.csi_loop.harness import CSILoopPlugin
from volumemanager._proto.csi.v1 import csi_pb2, csi_pb2_grpc

MiB = 1024 * 1024
NODE = "node1"
TOPOLOGY_KEY = "topology.csi-loop.test/node"
MODE = csi_pb2.VolumeCapability.AccessMode
RPC = csi_pb2.ControllerServiceCapability.RPC


def mount_cap(fs_type: str = "ext4") -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs_type),
        access_mode=MODE(mode=MODE.SINGLE_NODE_WRITER),
    )


class Client:
    """Identity, Controller and Node stubs on one channel to the plugin's socket."""

    def __init__(self, plugin: CSILoopPlugin) -> None:
        self.channel = grpc.insecure_channel(plugin.endpoint)
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)

    def create(self, name: str, size: int = 0, limit: int = 0, source: csi_pb2.VolumeContentSource | None = None,
               fs_type: str = "ext4", **kw) -> csi_pb2.Volume:
        req = csi_pb2.CreateVolumeRequest(
            name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=size, limit_bytes=limit),
            volume_capabilities=[mount_cap(fs_type)], **kw,
        )
        if source is not None:
            req.volume_content_source.CopyFrom(source)
        return self.controller.CreateVolume(req, timeout=30).volume

    def publish(self, volume_id: str, node_id: str = NODE, readonly: bool = False) -> dict[str, str]:
        resp = self.controller.ControllerPublishVolume(
            csi_pb2.ControllerPublishVolumeRequest(volume_id=volume_id, node_id=node_id, volume_capability=mount_cap(), readonly=readonly),
            timeout=30,
        )
        return dict(resp.publish_context)

    def unpublish(self, volume_id: str, node_id: str = NODE) -> None:
        self.controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=node_id), timeout=30
        )

    def stage(self, volume_id: str, path: Path, publish_context: dict[str, str] | None = None, fs_type: str = "ext4") -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.node.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id=volume_id, staging_target_path=str(path), volume_capability=mount_cap(fs_type),
                publish_context=publish_context or {},
            ),
            timeout=60,
        )

    def unstage(self, volume_id: str, path: Path) -> None:
        self.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(path)), timeout=30)

    def node_publish(self, volume_id: str, staging: Path, target: Path, publish_context: dict[str, str] | None = None,
                     fs_type: str = "ext4") -> None:
        self.node.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(
                volume_id=volume_id, staging_target_path=str(staging), target_path=str(target),
                volume_capability=mount_cap(fs_type), publish_context=publish_context or {},
            ),
            timeout=30,
        )

    def node_unpublish(self, volume_id: str, target: Path) -> None:
        self.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)), timeout=30)

    def delete(self, volume_id: str) -> None:
        self.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=30)

    def snapshot(self, source_volume_id: str, name: str) -> csi_pb2.Snapshot:
        return self.controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(source_volume_id=source_volume_id, name=name), timeout=60
        ).snapshot

    def capacity(self, **kw) -> int:
        return self.controller.GetCapacity(csi_pb2.GetCapacityRequest(**kw), timeout=30).available_capacity

    def close(self) -> None:
        self.channel.close()


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


@pytest.fixture
def controller(csi_loop, tmp_path: Path) -> Iterator[Callable[..., tuple[CSILoopPlugin, Client]]]:
    """``controller(*extra_args)`` -> a started controller-mode plugin and a client to it."""
    clients: list[Client] = []

    def make(*extra: str, capacity: str = "1Gi") -> tuple[CSILoopPlugin, Client]:
        plugin = csi_loop(registration=False, extra_args=["--controller", "--capacity", capacity, *extra])
        client = Client(plugin)
        clients.append(client)
        return plugin, client

    yield make
    for client in clients:
        client.close()


def test_capabilities_capacity_and_topology(controller) -> None:
    plugin, c = controller("--attach-required", capacity="512Mi")
    plugin_caps = c.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest(), timeout=10).capabilities
    services = {cap.service.type for cap in plugin_caps if cap.HasField("service")}
    assert services == {csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE,
                        csi_pb2.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS}
    ctrl_caps = {cap.rpc.type for cap in c.controller.ControllerGetCapabilities(
        csi_pb2.ControllerGetCapabilitiesRequest(), timeout=10).capabilities}
    assert ctrl_caps == {RPC.CREATE_DELETE_VOLUME, RPC.PUBLISH_UNPUBLISH_VOLUME, RPC.EXPAND_VOLUME,
                         RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.CLONE_VOLUME, RPC.GET_CAPACITY}
    node_caps = {cap.rpc.type for cap in c.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), timeout=10).capabilities}
    assert csi_pb2.NodeServiceCapability.RPC.EXPAND_VOLUME in node_caps

    info = c.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10)
    assert info.node_id == NODE
    assert dict(info.accessible_topology.segments) == {TOPOLOGY_KEY: NODE}

    assert c.capacity() == 512 * MiB
    here = csi_pb2.Topology(segments={TOPOLOGY_KEY: NODE})
    elsewhere = csi_pb2.Topology(segments={TOPOLOGY_KEY: "node2"})
    assert c.capacity(accessible_topology=here) == 512 * MiB
    assert c.capacity(accessible_topology=elsewhere) == 0

    vol = c.create("pvc-topo", 100 * MiB)
    assert [dict(t.segments) for t in vol.accessible_topology] == [{TOPOLOGY_KEY: NODE}]
    assert c.capacity() == 412 * MiB
    # Requisite topology that is not this node's: nothing can be provisioned there.
    assert code_of(lambda: c.create("pvc-far", 10 * MiB, accessibility_requirements=csi_pb2.TopologyRequirement(
        requisite=[elsewhere]))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    ok = c.create("pvc-near", 10 * MiB, accessibility_requirements=csi_pb2.TopologyRequirement(requisite=[elsewhere, here]))
    assert ok.capacity_bytes == 10 * MiB


def test_custom_topology_segment(controller) -> None:
    _, c = controller("--topology-key", "example.com/rack", "--topology-value", "r7")
    info = c.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10)
    assert dict(info.accessible_topology.segments) == {"example.com/rack": "r7"}
    caps = {cap.rpc.type for cap in c.controller.ControllerGetCapabilities(
        csi_pb2.ControllerGetCapabilitiesRequest(), timeout=10).capabilities}
    assert RPC.PUBLISH_UNPUBLISH_VOLUME not in caps  # attach not required: not advertised


def test_create_is_idempotent_and_refuses_conflicts_and_exhaustion(controller) -> None:
    plugin, c = controller(capacity="1Gi")
    a = c.create("pvc-a", 100 * MiB, parameters={"tier": "gold"})
    assert a.capacity_bytes == 100 * MiB and a.volume_id
    image = plugin.volumes_dir / f"{a.volume_id}.img"
    assert image.stat().st_size == 100 * MiB
    assert image.stat().st_blocks * 512 < MiB  # sparse
    # Same name, compatible arguments: the same answer (a retry after a lost reply).
    again = c.create("pvc-a", 50 * MiB, limit=200 * MiB, parameters={"tier": "gold"})
    assert again == a
    # Same name, incompatible: ALREADY_EXISTS, and nothing changes.
    assert code_of(lambda: c.create("pvc-a", 200 * MiB, parameters={"tier": "gold"})) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: c.create("pvc-a", 100 * MiB, parameters={"tier": "tin"})) == grpc.StatusCode.ALREADY_EXISTS
    # The pool: 1 GiB, 100 MiB used.
    assert code_of(lambda: c.create("pvc-big", 1000 * MiB)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not list(plugin.volumes_dir.glob("*.img"))[1:]  # only pvc-a's image
    assert c.capacity() == 924 * MiB
    # Bad ranges and missing fields.
    assert code_of(lambda: c.create("pvc-x", 10 * MiB, limit=5 * MiB)) == grpc.StatusCode.OUT_OF_RANGE
    assert code_of(lambda: c.create("", 10 * MiB)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: c.controller.CreateVolume(csi_pb2.CreateVolumeRequest(name="pvc-nocap"), timeout=10)) \
        == grpc.StatusCode.INVALID_ARGUMENT
    # Without a size the plugin picks one within the limit.
    small = c.create("pvc-small", 0, limit=8 * MiB)
    assert 0 < small.capacity_bytes <= 8 * MiB

    confirmed = c.controller.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=a.volume_id, volume_capabilities=[mount_cap()]), timeout=10)
    assert confirmed.HasField("confirmed")
    assert code_of(lambda: c.controller.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id="vol-nope", volume_capabilities=[mount_cap()]), timeout=10)) == grpc.StatusCode.NOT_FOUND

    c.delete(a.volume_id)
    assert not image.exists()
    c.delete(a.volume_id)  # unknown id: success by the spec
    assert c.capacity() == 1024 * MiB - small.capacity_bytes
    # The name is free again; the id is stable for it.
    assert c.create("pvc-a", 300 * MiB).volume_id == a.volume_id
    calls = [r["method"] for r in plugin.calls() if r["method"] in ("CreateVolume", "DeleteVolume")]
    assert calls.count("DeleteVolume") == 2


def test_attach_stage_publish_write_and_tear_down_in_order(controller, tmp_path: Path) -> None:
    plugin, c = controller("--attach-required")
    vol = c.create("pvc-life", 64 * MiB)
    vid = vol.volume_id
    staging, target = tmp_path / "staging" / vid, tmp_path / "pods" / "p1" / "vol"
    target.parent.mkdir(parents=True)

    # Not published: the node refuses, and nothing is attached.
    assert code_of(lambda: c.stage(vid, staging)) == grpc.StatusCode.FAILED_PRECONDITION
    assert plugin.loop_devices() == []
    assert code_of(lambda: c.publish("vol-unknown")) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: c.publish(vid, node_id="node2")) == grpc.StatusCode.NOT_FOUND

    ctx = c.publish(vid)
    device = ctx["devicePath"]
    assert device.startswith("/dev/loop") and plugin.loop_devices() == [device]
    assert c.publish(vid) == ctx  # idempotent
    assert code_of(lambda: c.publish(vid, readonly=True)) == grpc.StatusCode.ALREADY_EXISTS
    # A publish_context naming another device is refused.
    assert code_of(lambda: c.stage(vid, staging, {"devicePath": "/dev/loop999"})) == grpc.StatusCode.FAILED_PRECONDITION

    c.stage(vid, staging, ctx)
    c.stage(vid, staging, ctx)  # idempotent
    c.node_publish(vid, staging, target, ctx)
    (target / "data.txt").write_text("hello")

    assert code_of(lambda: c.delete(vid)) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: c.unpublish(vid)) == grpc.StatusCode.FAILED_PRECONDITION  # still staged
    assert plugin.loop_devices() == [device]

    c.node_unpublish(vid, target)
    c.unstage(vid, staging)
    # The node does not detach what the controller attached.
    assert plugin.loop_devices() == [device]
    assert code_of(lambda: c.delete(vid)) == grpc.StatusCode.FAILED_PRECONDITION  # still attached
    c.unpublish(vid)
    assert plugin.loop_devices() == []
    c.unpublish(vid)  # idempotent
    c.unpublish("vol-unknown")  # unknown: nothing to detach, success
    c.delete(vid)

    order = [r["method"] for r in plugin.calls() if r.get("volume_id") == vid and r["method"] in (
        "ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume", "NodeUnpublishVolume",
        "NodeUnstageVolume", "ControllerUnpublishVolume", "DeleteVolume")]
    assert order[-6:] == ["NodeUnpublishVolume", "NodeUnstageVolume", "DeleteVolume", "ControllerUnpublishVolume",
                          "ControllerUnpublishVolume", "DeleteVolume"]
    publish_logged = [r for r in plugin.calls("NodeStageVolume") if r.get("publish_context")]
    assert publish_logged and publish_logged[-1]["publish_context"] == ctx


def test_node_refuses_volumes_the_controller_does_not_know(controller, tmp_path: Path) -> None:
    plugin, c = controller()  # controller mode, no attach: the node sets up the loop itself
    assert code_of(lambda: c.stage("vol-never-created", tmp_path / "s1")) == grpc.StatusCode.NOT_FOUND
    vol = c.create("pvc-noattach", 32 * MiB)
    staging = tmp_path / "s2"
    c.stage(vol.volume_id, staging)
    assert len(plugin.loop_devices()) == 1
    assert code_of(lambda: c.delete(vol.volume_id)) == grpc.StatusCode.FAILED_PRECONDITION
    c.unstage(vol.volume_id, staging)
    assert plugin.loop_devices() == []
    c.delete(vol.volume_id)


@pytest.mark.skipif(shutil.which("mkfs.xfs") is None, reason="needs xfsprogs")
def test_expand_xfs_controller_then_node(controller, tmp_path: Path) -> None:
    plugin, c = controller("--attach-required", capacity="2Gi")
    vol = c.create("pvc-grow", 320 * MiB, fs_type="xfs")  # mkfs.xfs wants 300 MB at least
    vid = vol.volume_id
    ctx = c.publish(vid)
    staging, target = tmp_path / "staging", tmp_path / "pods" / "vol"
    target.parent.mkdir(parents=True)
    c.stage(vid, staging, ctx, fs_type="xfs")
    c.node_publish(vid, staging, target, ctx, fs_type="xfs")
    before = os.statvfs(target).f_blocks * os.statvfs(target).f_frsize

    expand = lambda req, lim=0: c.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(  # noqa: E731
        volume_id=vid, capacity_range=csi_pb2.CapacityRange(required_bytes=req, limit_bytes=lim),
        volume_capability=mount_cap("xfs")), timeout=30)
    resp = expand(512 * MiB)
    assert resp.capacity_bytes == 512 * MiB and resp.node_expansion_required
    assert int(subprocess.run(["blockdev", "--getsize64", ctx["devicePath"]], capture_output=True, text=True,
                              check=True).stdout) == 512 * MiB
    assert expand(512 * MiB).capacity_bytes == 512 * MiB  # idempotent
    assert expand(400 * MiB).capacity_bytes == 512 * MiB  # already bigger: OK, no shrink
    assert code_of(lambda: expand(100 * MiB, 200 * MiB)) == grpc.StatusCode.OUT_OF_RANGE
    assert code_of(lambda: expand(4096 * MiB)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_of(lambda: c.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id="vol-nope", capacity_range=csi_pb2.CapacityRange(required_bytes=MiB)), timeout=10)) == grpc.StatusCode.NOT_FOUND
    assert c.capacity() == 2048 * MiB - 512 * MiB

    node_expand = lambda req: c.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(  # noqa: E731
        volume_id=vid, volume_path=str(target), staging_target_path=str(staging),
        capacity_range=csi_pb2.CapacityRange(required_bytes=req), volume_capability=mount_cap("xfs")), timeout=60)
    # The node does not grow what the controller has not.
    assert code_of(lambda: node_expand(1024 * MiB)) == grpc.StatusCode.OUT_OF_RANGE
    assert node_expand(512 * MiB).capacity_bytes == 512 * MiB
    after = os.statvfs(target).f_blocks * os.statvfs(target).f_frsize
    assert after > before + 150 * MiB

    c.node_unpublish(vid, target)
    c.unstage(vid, staging)
    c.unpublish(vid)
    c.delete(vid)


def test_snapshot_restore_has_the_data_of_the_snapshot_moment(controller, tmp_path: Path) -> None:
    plugin, c = controller("--attach-required")
    src = c.create("pvc-src", 64 * MiB)
    ctx = c.publish(src.volume_id)
    staging = tmp_path / "staging-src"
    c.stage(src.volume_id, staging, ctx)
    (staging / "f.txt").write_text("before")

    snap = c.snapshot(src.volume_id, "snapshot-1")  # taken while mounted: frozen, flushed, copied
    assert snap.ready_to_use and snap.source_volume_id == src.volume_id and snap.size_bytes == 64 * MiB
    assert snap.creation_time.seconds > 0
    (staging / "f.txt").write_text("after")
    assert c.snapshot(src.volume_id, "snapshot-1") == snap  # same name, same answer
    other = c.create("pvc-other", 16 * MiB)
    assert code_of(lambda: c.snapshot(other.volume_id, "snapshot-1")) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: c.snapshot("vol-nope", "snapshot-2")) == grpc.StatusCode.NOT_FOUND

    from_snap = csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id))
    assert code_of(lambda: c.create("pvc-small", 16 * MiB, source=from_snap)) == grpc.StatusCode.OUT_OF_RANGE
    missing = csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id="snap-nope"))
    assert code_of(lambda: c.create("pvc-missing", 64 * MiB, source=missing)) == grpc.StatusCode.NOT_FOUND
    restored = c.create("pvc-restored", 0, source=from_snap)
    assert restored.capacity_bytes == 64 * MiB and restored.content_source.snapshot.snapshot_id == snap.snapshot_id
    assert c.create("pvc-restored", 0, source=from_snap) == restored
    assert code_of(lambda: c.create("pvc-restored", 0)) == grpc.StatusCode.ALREADY_EXISTS  # other source

    # A clone of the live volume has the data as of now.
    from_vol = csi_pb2.VolumeContentSource(volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=src.volume_id))
    clone = c.create("pvc-clone", 128 * MiB, source=from_vol)
    assert clone.capacity_bytes == 128 * MiB

    for name, vol, expected in (("r", restored, "before"), ("c", clone, "after")):
        vctx = c.publish(vol.volume_id)
        path = tmp_path / f"staging-{name}"
        c.stage(vol.volume_id, path, vctx)
        assert (path / "f.txt").read_text() == expected
        c.unstage(vol.volume_id, path)
        c.unpublish(vol.volume_id)
        c.delete(vol.volume_id)

    c.unstage(src.volume_id, staging)
    c.unpublish(src.volume_id)
    c.delete(src.volume_id)
    # A snapshot outlives its source volume, and deleting it is idempotent.
    assert len(c.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(), timeout=10).entries) == 1
    c.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=10)
    c.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=10)
    assert not list(plugin.snapshots_dir.iterdir())


def test_list_snapshots_filters_pages_and_not_ready_polls(controller) -> None:
    plugin, c = controller()
    a = c.create("pvc-a", 8 * MiB)
    b = c.create("pvc-b", 8 * MiB)
    made = {c.snapshot(a.volume_id, f"snap-a{i}").snapshot_id for i in range(3)}
    made.add(c.snapshot(b.volume_id, "snap-b0").snapshot_id)

    list_ = lambda **kw: c.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(**kw), timeout=10)  # noqa: E731
    seen, token, pages = [], "", 0
    while True:
        page = list_(max_entries=3, starting_token=token)
        pages += 1
        assert len(page.entries) <= 3
        seen += [e.snapshot.snapshot_id for e in page.entries]
        token = page.next_token
        if not token:
            break
    assert pages == 2 and sorted(seen) == sorted(made) and len(seen) == 4
    assert {e.snapshot.snapshot_id for e in list_(source_volume_id=a.volume_id).entries} == made - {
        e.snapshot.snapshot_id for e in list_(source_volume_id=b.volume_id).entries}
    one = sorted(made)[0]
    assert [e.snapshot.snapshot_id for e in list_(snapshot_id=one).entries] == [one]
    assert list(list_(snapshot_id="snap-nope").entries) == []  # not found: an empty list
    assert list(list_(source_volume_id="vol-nope").entries) == []
    assert code_of(lambda: list_(starting_token="bogus")) == grpc.StatusCode.ABORTED

    # Not ready for two answers: the CreateSnapshot reply and the first re-issue.
    plugin.set_fault("SnapshotNotReady", count=1, polls=2)
    slow = c.snapshot(a.volume_id, "snap-slow")
    assert not slow.ready_to_use
    assert not c.snapshot(a.volume_id, "snap-slow").ready_to_use
    assert c.snapshot(a.volume_id, "snap-slow").ready_to_use
    assert [e.snapshot.ready_to_use for e in list_(snapshot_id=slow.snapshot_id).entries] == [True]


def test_faults_and_restart_keep_volumes_attachments_and_snapshots(controller, tmp_path: Path) -> None:
    plugin, c = controller("--attach-required")
    plugin.set_fault("CreateVolume", code="RESOURCE_EXHAUSTED", message="pool busy", count=1)
    assert code_of(lambda: c.create("pvc-f", 32 * MiB)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    vol = c.create("pvc-f", 32 * MiB)
    # The storage acts, the answer is lost: a retry must get the same attachment.
    plugin.set_fault("ControllerPublishVolume", code="DEADLINE_EXCEEDED", count=1, after=True)
    assert code_of(lambda: c.publish(vol.volume_id)) == grpc.StatusCode.DEADLINE_EXCEEDED
    devices = plugin.loop_devices()
    assert len(devices) == 1
    assert c.publish(vol.volume_id) == {"devicePath": devices[0]}
    snap = c.snapshot(vol.volume_id, "snap-keep")
    plugin.set_fault("DeleteSnapshot", code="UNAVAILABLE", count=1)
    assert code_of(lambda: c.controller.DeleteSnapshot(
        csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id), timeout=10)) == grpc.StatusCode.UNAVAILABLE

    plugin.restart()
    c2 = Client(plugin)
    try:
        assert c2.create("pvc-f", 32 * MiB) == vol
        assert c2.publish(vol.volume_id) == {"devicePath": devices[0]}
        assert [e.snapshot.snapshot_id for e in c2.controller.ListSnapshots(
            csi_pb2.ListSnapshotsRequest(), timeout=10).entries] == [snap.snapshot_id]
        assert c2.capacity() == 1024 * MiB - 32 * MiB
        c2.unpublish(vol.volume_id)
        assert plugin.loop_devices() == []
        c2.delete(vol.volume_id)
    finally:
        c2.close()
    # Calls are logged with their ids and never with secrets.
    logged = plugin.calls("ControllerPublishVolume")
    assert logged and all(r["node_id"] == NODE and r["volume_id"] == vol.volume_id for r in logged)


def test_secrets_are_never_logged(controller) -> None:
    plugin, c = controller()
    c.create("pvc-secret", 8 * MiB, secrets={"password": "hunter2-value"})
    text = (plugin.state_dir / "calls.log").read_text()
    assert "hunter2-value" not in text and "password" not in text
    assert plugin.calls("CreateVolume")[-1]["secret_keys"] == 1
