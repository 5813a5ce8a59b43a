"""Issue 14 item 6 (snapshots and clones): the daemon plays external-snapshotter and the
provisioner's restore/clone on one host. The reference plugin runs as a separate process in
Controller mode, discovered through plugins_registry/; its calls are read off its call log and
its snapshots off its state file."""

from __future__ import annotations

import json
import os

import pytest

from tests.csi_loop.harness import plugin_factory
from tests.daemon_harness import pods_on_claim, wait_until
from tests.fixtures_mounts import require_root, require_tools

pytestmark = [pytest.mark.timeout(240)]

DRIVER = "csi-loop.test"
CONTROLLER_ARGS = ["--controller", "--capacity", "512Mi"]
SRC_UID = "5a000000-0000-4000-8000-000000000001"
SNAP_UID = "5a000000-0000-4000-8000-0000000000aa"


def storage_class() -> str:
    return f"""\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: loop}}
provisioner: {DRIVER}
parameters:
  csi.storage.k8s.io/fstype: ext4
reclaimPolicy: Delete
volumeBindingMode: Immediate
"""


def snapshot_class(policy: str = "Delete") -> str:
    return f"""\
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata: {{name: loop-snap}}
driver: {DRIVER}
deletionPolicy: {policy}
parameters:
  tier: gold
"""


def claim(name: str, uid: str, size: str = "32Mi", source: str | None = None) -> str:
    text = f"""\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}, namespace: demo, uid: "{uid}"}}
spec:
  storageClassName: loop
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: {size}}}}}
"""
    if source is not None:
        kind, ref = source.split("/")
        group = "snapshot.storage.k8s.io" if kind == "VolumeSnapshot" else '""'
        text += f"  dataSource: {{apiGroup: {group}, kind: {kind}, name: {ref}}}\n"
    return text


def volume_snapshot(name: str = "snap1", uid: str = SNAP_UID, source: str = "data") -> str:
    return f"""\
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {{name: {name}, namespace: demo, uid: "{uid}"}}
spec:
  volumeSnapshotClassName: loop-snap
  source: {{persistentVolumeClaimName: {source}}}
"""


def docs(*parts: str) -> str:
    return "---\n".join(parts)


@pytest.fixture(autouse=True)
def _root():
    require_root()
    require_tools("losetup", "mkfs.ext4")


@pytest.fixture
def csi_loop(tmp_path):
    with plugin_factory(tmp_path / "drivers", registration_dir=tmp_path / "plugins_registry",
                        cleanup_roots=[tmp_path]) as make:
        yield make


def driver_state(plugin) -> dict:
    try:
        return json.loads((plugin.state_dir / "state.json").read_text())
    except FileNotFoundError:
        return {}


def snapshots(d) -> dict[str, dict]:
    return {f"{s['namespace']}/{s['name']}": s for s in d.status()["snapshots"]}


def registered(d) -> None:
    wait_until(lambda: any(x["name"] == DRIVER and x["controller_capabilities"] for x in d.status()["drivers"]),
               15, what="driver registration with its Controller service")


def mount_path(d, pod: str) -> str:
    return [v for v in d.status()["volumes"] if v["pod"] == pod][0]["mount_path"]


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def source_pod_with_data(d, text: str) -> str:
    d.write_manifest("base.yaml", docs(storage_class(), snapshot_class(), claim("data", SRC_UID),
                                        *pods_on_claim("data", ("app",))))
    assert d.cli("wait", "demo/app", "--timeout", "60").returncode == 0
    path = mount_path(d, "demo/app")
    write(os.path.join(path, "kept.txt"), text)
    return path


def test_snapshot_restored_into_a_new_claim_has_the_data_of_the_snapshot_moment(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    path = source_pod_with_data(d, "at the snapshot")

    d.write_manifest("snap.yaml", volume_snapshot())
    wait_until(lambda: snapshots(d).get("demo/snap1", {}).get("ready_to_use"), 30, what="the snapshot ready")
    s = snapshots(d)["demo/snap1"]
    assert s["phase"] == "Ready" and s["source_claim"] == "demo/data" and s["class"] == "loop-snap"
    assert s["driver"] == DRIVER and s["snapshot_handle"] and s["restore_size_bytes"] >= 32 << 20
    assert s["creation_time"] and s["last_error"] is None and s["uid"] == SNAP_UID
    create = plugin.calls("CreateSnapshot")
    assert [c["name"] for c in create] == [f"snapshot-{SNAP_UID}"]
    src_handle = d.status()["claims"][0]["volume_handle"]
    assert create[0]["source_volume_id"] == src_handle
    record = json.loads((d.root / "state" / "snapshots" / f"snapshot-{SNAP_UID}.json").read_text())
    assert record["snapshot_id"] == s["snapshot_handle"] and record["ready_to_use"] is True
    assert record["deletion_policy"] == "Delete" and record["parameters"] == {"tier": "gold"}

    write(os.path.join(path, "kept.txt"), "changed after the snapshot")

    restored_uid = "5a000000-0000-4000-8000-000000000002"
    d.write_manifest("restore.yaml", docs(claim("restored", restored_uid, source="VolumeSnapshot/snap1"),
                                           *pods_on_claim("restored", ("reader",))))
    assert d.cli("wait", "demo/reader", "--timeout", "60").returncode == 0
    assert read(os.path.join(mount_path(d, "demo/reader"), "kept.txt")) == "at the snapshot"
    restore = [c for c in plugin.calls("CreateVolume") if c["name"] == f"pvc-{restored_uid}"]
    assert restore and all(c["content_source"] == {"snapshot_id": s["snapshot_handle"]} for c in restore)
    assert read(os.path.join(path, "kept.txt")) == "changed after the snapshot"

    # The VolumeSnapshot goes (deletionPolicy Delete): DeleteSnapshot, the record goes.
    (d.manifests / "snap.yaml").unlink()
    wait_until(lambda: plugin.calls("DeleteSnapshot"), 30, what="DeleteSnapshot")
    assert plugin.calls("DeleteSnapshot")[0]["snapshot_id"] == s["snapshot_handle"]
    wait_until(lambda: d.status()["snapshots"] == [], 15, what="no snapshot left in status")
    assert driver_state(plugin).get("snapshots") == {}
    # The restored volume lives on without its snapshot.
    assert read(os.path.join(mount_path(d, "demo/reader"), "kept.txt")) == "at the snapshot"

    for name in ("restore.yaml", "base.yaml"):
        (d.manifests / name).unlink()
    wait_until(lambda: not d.mounts(), 40, what="nothing mounted")


def test_clone_of_a_claim_has_its_data(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    source_pod_with_data(d, "cloned content")
    clone_uid = "5a000000-0000-4000-8000-000000000003"
    d.write_manifest("clone.yaml", docs(claim("copy", clone_uid, source="PersistentVolumeClaim/data"),
                                         *pods_on_claim("copy", ("reader",))))
    assert d.cli("wait", "demo/reader", "--timeout", "60").returncode == 0
    assert read(os.path.join(mount_path(d, "demo/reader"), "kept.txt")) == "cloned content"
    src_handle = [c for c in d.status()["claims"] if c["claim"] == "demo/data"][0]["volume_handle"]
    clone = [c for c in plugin.calls("CreateVolume") if c["name"] == f"pvc-{clone_uid}"]
    assert clone and clone[-1]["content_source"] == {"volume_id": src_handle}
    for name in ("clone.yaml", "base.yaml"):
        (d.manifests / name).unlink()
    wait_until(lambda: not d.mounts(), 40, what="nothing mounted")


def test_not_ready_snapshot_is_followed_and_a_restore_waits_for_it_then_retain_keeps_it(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    d.write_manifest("base.yaml", docs(storage_class(), snapshot_class("Retain"), claim("data", SRC_UID)))
    wait_until(lambda: d.status()["claims"] and d.status()["claims"][0]["phase"] == "Bound", 30, what="Bound")
    plugin.set_fault("SnapshotNotReady", polls=6)
    restored_uid = "5a000000-0000-4000-8000-000000000004"
    d.write_manifest("snap.yaml", docs(volume_snapshot(),
                                        claim("restored", restored_uid, source="VolumeSnapshot/snap1"),
                                        *pods_on_claim("restored", ("reader",))))

    def not_ready() -> bool:
        s = snapshots(d).get("demo/snap1", {})
        return bool(s.get("snapshot_handle")) and s["ready_to_use"] is False and s["last_error"] is None

    wait_until(not_ready, 30, what="the snapshot created, not ready")
    s = snapshots(d)["demo/snap1"]
    assert s["phase"] == "Pending" and s["next_retry_seconds"] is not None, s
    out = d.cli("explain", "demo/reader", check=False)
    assert out.returncode == 1
    assert "claim demo/restored is Pending" in out.stdout, out.stdout
    assert "restores from volumesnapshot demo/snap1, which is Pending" in out.stdout, out.stdout
    assert "waiting for volumesnapshot demo/snap1 to be ready" in out.stdout, out.stdout
    plan = json.loads(d.cli("plan", "--json").stdout)
    assert any(a["action"] == "create_snapshot" and a["volume_id"] == f"snapshot-{SNAP_UID}" for a in plan), plan
    assert not any(c["name"] == f"pvc-{restored_uid}" for c in plugin.calls("CreateVolume"))

    wait_until(lambda: snapshots(d)["demo/snap1"]["ready_to_use"], 40, what="the snapshot followed until ready")
    assert len(plugin.calls("CreateSnapshot")) >= 7, "followed by sending CreateSnapshot again"
    assert {c["name"] for c in plugin.calls("CreateSnapshot")} == {f"snapshot-{SNAP_UID}"}
    assert d.cli("wait", "demo/reader", "--timeout", "60").returncode == 0

    # Retain: the VolumeSnapshot goes, the snapshot stays (shown), no DeleteSnapshot.
    d.write_manifest("snap.yaml", docs(claim("restored", restored_uid, source="VolumeSnapshot/snap1"),
                                        *pods_on_claim("restored", ("reader",))))
    wait_until(lambda: snapshots(d).get("demo/snap1", {}).get("phase") == "Retained", 15, what="Retained")
    assert plugin.calls("DeleteSnapshot") == []
    assert len(driver_state(plugin)["snapshots"]) == 1
    for name in ("snap.yaml", "base.yaml"):
        (d.manifests / name).unlink()
    wait_until(lambda: not d.mounts(), 40, what="nothing mounted")


def test_sigkill_during_create_snapshot_then_restart_makes_one_snapshot(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    d.write_manifest("base.yaml", docs(storage_class(), snapshot_class(), claim("data", SRC_UID)))
    wait_until(lambda: d.status()["claims"] and d.status()["claims"][0]["phase"] == "Bound", 30, what="Bound")
    plugin.set_fault("CreateSnapshot", sleep=3, count=1)
    d.write_manifest("snap.yaml", volume_snapshot())
    wait_until(lambda: plugin.calls("CreateSnapshot"), 15, what="CreateSnapshot sent")
    d.kill()  # SIGKILL
    wait_until(lambda: len(driver_state(plugin).get("snapshots", {})) == 1, 15, what="the slow CreateSnapshot done")
    assert not (d.root / "state" / "snapshots" / f"snapshot-{SNAP_UID}.json").exists()
    d.start()
    wait_until(lambda: snapshots(d).get("demo/snap1", {}).get("ready_to_use"), 30, what="the snapshot ready")
    assert len(driver_state(plugin)["snapshots"]) == 1, "exactly one snapshot after the crash"
    assert {c["name"] for c in plugin.calls("CreateSnapshot")} == {f"snapshot-{SNAP_UID}"}
    assert any(i["step"] == "CreateSnapshot" for i in d.status()["interrupted_at_start"])
    assert snapshots(d)["demo/snap1"]["snapshot_handle"] in driver_state(plugin)["snapshots"]


def test_sigkill_during_create_snapshot_then_snapshot_removed_before_restart_deletes_it(daemon_factory, csi_loop):
    """The intent keeps the request: after a restart the interrupted CreateSnapshot is sent
    again although its VolumeSnapshot is gone, and the snapshot it made is deleted, not leaked."""
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    d.write_manifest("base.yaml", docs(storage_class(), snapshot_class(), claim("data", SRC_UID)))
    wait_until(lambda: d.status()["claims"] and d.status()["claims"][0]["phase"] == "Bound", 30, what="Bound")
    plugin.set_fault("CreateSnapshot", sleep=3, count=1)
    d.write_manifest("snap.yaml", volume_snapshot())
    wait_until(lambda: plugin.calls("CreateSnapshot"), 15, what="CreateSnapshot sent")
    d.kill()  # SIGKILL
    (d.manifests / "snap.yaml").unlink()
    wait_until(lambda: len(driver_state(plugin).get("snapshots", {})) == 1, 15, what="the slow CreateSnapshot done")
    d.start()
    wait_until(lambda: plugin.calls("DeleteSnapshot"), 30, what="DeleteSnapshot of the snapshot made before the crash")
    wait_until(lambda: driver_state(plugin).get("snapshots") == {}, 15, what="no snapshot left in the driver")
    assert {c["name"] for c in plugin.calls("CreateSnapshot")} == {f"snapshot-{SNAP_UID}"}
    wait_until(lambda: d.status()["snapshots"] == [], 15, what="no snapshot record left")
    assert not (d.root / "state" / "snapshots" / f"snapshot-{SNAP_UID}.json").exists()
