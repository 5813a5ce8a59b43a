"""The snapshot half of the controller's pure decision with literal inputs: which snapshots are
created, followed and deleted (and never deleted), the CreateSnapshot request, and the content
source a restore or clone gets (or what it waits for). Plus the snapshot records on disk."""

from __future__ import annotations

import dataclasses
import os

import pytest

from operation_executor.errors import FinalError
from volumemanager.controller import decide as dc
from volumemanager.controller import snapshots as sn
from volumemanager.controller.records import ANN_CLAIM_UID
from volumemanager.controller.snapshot_records import SnapshotRecord, SnapshotRecords
from volumemanager.manifests import models as m

ORIGIN = m.Origin("test.yaml", 1)
DRIVER = "csi.example.com"
CAPS = frozenset({"CREATE_DELETE_VOLUME", "CREATE_DELETE_SNAPSHOT", "CLONE_VOLUME"})
READY = {DRIVER: dc.DriverView(True, CAPS)}
SC = m.StorageClass("fast", DRIVER, {}, "Delete", "Immediate", False, (), (), ORIGIN)


def vsc(policy: str = "Delete", name: str = "snapclass", **params: str) -> m.VolumeSnapshotClass:
    return m.VolumeSnapshotClass(name, DRIVER, policy, dict(params), ORIGIN)


def pvc(name: str = "data", uid: str = "u1", source: m.TypedObjectReference | None = None,
        request: int = 1 << 30) -> m.PersistentVolumeClaim:
    return m.PersistentVolumeClaim("demo", name, None, None, ("ReadWriteOnce",), ORIGIN, uid=uid,
                                   storage_class_name="fast", request_bytes=request, data_source=source)


def pv(name: str = "pvc-u1", uid: str = "u1") -> m.PersistentVolume:
    src = m.CSISource(DRIVER, "handle-1", "ext4", {}, False)
    return m.PersistentVolume(name, src, m.FILESYSTEM, (), ("ReadWriteOnce",), 1 << 30, ("demo", "data"), ORIGIN,
                              reclaim_policy="Delete", storage_class_name="fast", annotations={ANN_CLAIM_UID: uid})


def vs(name: str = "s1", uid: str = "v1", klass: str | None = "snapclass", claim: str = "data") -> m.VolumeSnapshot:
    return m.VolumeSnapshot("demo", name, uid, klass, claim, ORIGIN)


def rec(ready: bool = True, policy: str = "Delete", size: int | None = 1 << 30) -> SnapshotRecord:
    return SnapshotRecord("snapshot-v1", "demo", "s1", "v1", "demo/data", "pvc-u1", "handle-1", DRIVER, "snapclass",
                          policy, "snap-id-1", ready, size, 1.0)


def world(claims=(pvc(),), snaps=(vs(),), classes=(vsc(),)) -> m.Snapshot:
    return m.Snapshot({}, {}, {(c.namespace, c.name): c for c in claims}, {}, (), 1,
                      storageclasses={"fast": SC}, volumesnapshotclasses={c.name: c for c in classes},
                      volumesnapshots={(s.namespace, s.name): s for s in snaps})


def decide(snap: m.Snapshot, records=None, snapshot_records=None, drivers=READY, ready_to_delete=True) -> dc.Decision:
    return dc.decide(snap, {"pvc-u1": pv()} if records is None else records, drivers, frozenset(), ready_to_delete,
                     snapshot_records=snapshot_records or {})


def kinds(d: dc.Decision) -> list[tuple[str, str]]:
    return [(a.kind, a.name) for a in d.actions]


def test_a_snapshot_of_a_bound_claim_is_created_once_and_followed_until_ready():
    assert kinds(decide(world())) == [("create_snapshot", "snapshot-v1")]
    assert kinds(decide(world(), snapshot_records={"snapshot-v1": rec(ready=False)})) == [
        ("create_snapshot", "snapshot-v1")]
    assert kinds(decide(world(), snapshot_records={"snapshot-v1": rec()})) == []


def test_a_snapshot_waits_for_its_claim_class_and_driver():
    d = decide(world(), records={})  # the claim is being provisioned: not bound yet
    assert kinds(d) == [("provision", "pvc-u1")] and "to be bound" in d.waiting["snapshot-v1"]
    d = decide(world(classes=()))
    assert d.actions == [] and d.waiting["snapshot-v1"] == "VolumeSnapshotClass snapclass"
    d = decide(world(), drivers={DRIVER: dc.DriverView(True, frozenset({"CREATE_DELETE_VOLUME"}))})
    assert d.actions == [] and "CREATE_DELETE_SNAPSHOT" in d.waiting["snapshot-v1"]
    # No class name: the only class of the driver; two are ambiguous.
    assert kinds(decide(world(snaps=(vs(klass=None),)))) == [("create_snapshot", "snapshot-v1")]
    d = decide(world(snaps=(vs(klass=None),), classes=(vsc(), vsc(name="other"))))
    assert d.actions == [] and "exactly one" in d.waiting["snapshot-v1"]


def test_removed_snapshot_is_deleted_only_with_delete_policy_and_a_whole_desired_state():
    gone = world(snaps=())
    assert kinds(decide(gone, snapshot_records={"snapshot-v1": rec()})) == [("delete_snapshot", "snapshot-v1")]
    assert kinds(decide(gone, snapshot_records={"snapshot-v1": rec(policy="Retain")})) == []
    d = decide(gone, snapshot_records={"snapshot-v1": rec()}, ready_to_delete=False)
    assert d.actions == [] and "read whole" in d.waiting["snapshot-v1"]
    # Never a snapshot without our record (nothing to delete when there is none).
    assert kinds(decide(gone)) == []


def test_restore_waits_for_a_ready_snapshot_then_carries_its_id():
    restore = pvc("restored", "u2", m.TypedObjectReference("snapshot.storage.k8s.io", "VolumeSnapshot", "s1"))
    s = world(claims=(pvc(), restore))
    d = decide(s, snapshot_records={"snapshot-v1": rec(ready=False)})
    assert "provision" not in [k for k, _ in kinds(d)]
    assert d.waiting["pvc-u2"] == "volumesnapshot demo/s1 to be ready"
    d = decide(s, snapshot_records={"snapshot-v1": rec()})
    prov = [a for a in d.actions if a.kind == "provision"]
    assert [a.content_source for a in prov] == [("snapshot", "snap-id-1")]
    small = dataclasses.replace(restore, request_bytes=1 << 20)
    d = decide(world(claims=(pvc(), small)), snapshot_records={"snapshot-v1": rec()})
    assert "restore size" in d.waiting["pvc-u2"] and not [a for a in d.actions if a.kind == "provision"]


def test_clone_carries_the_source_volume_and_needs_clone_volume():
    clone = pvc("copy", "u3", m.TypedObjectReference("", "PersistentVolumeClaim", "data"))
    s = world(claims=(pvc(), clone), snaps=())
    prov = [a for a in decide(s).actions if a.kind == "provision"]
    assert [(a.name, a.content_source) for a in prov] == [("pvc-u3", ("volume", "handle-1"))]
    d = decide(s, drivers={DRIVER: dc.DriverView(True, frozenset({"CREATE_DELETE_VOLUME"}))})
    assert "CLONE_VOLUME" in d.waiting["pvc-u3"]
    d = decide(s, records={})  # the source is not bound yet
    assert "pvc-u3" in d.waiting and "to be bound" in d.waiting["pvc-u3"]


def test_create_snapshot_request_strips_reserved_keys_and_resolves_the_secret():
    klass = vsc(**{"tier": "gold", sn.SECRET_NAME_KEY: "snap-${volumesnapshot.name}",
                   sn.SECRET_NAMESPACE_KEY: "${volumesnapshot.namespace}"})
    req = sn.build_snapshot_request(vs(), klass, pv(), "demo/data")
    assert req.name == "snapshot-v1" and req.source_volume_id == "handle-1" and req.parameters == {"tier": "gold"}
    assert (req.secret_ref.namespace, req.secret_ref.name) == ("demo", "snap-s1")
    with pytest.raises(FinalError) as e:
        sn.build_snapshot_request(vs(), vsc(**{"csi.storage.k8s.io/bogus": "x"}), pv(), "demo/data")
    assert e.value.code == "INVALID_PARAMETER"


def test_records_survive_a_reload_and_a_stray_temp_file_goes(tmp_path):
    store = SnapshotRecords(str(tmp_path))
    store.write(rec())
    (tmp_path / "snapshots" / "snapshot-x.json.tmp").write_text("{half")
    (tmp_path / "snapshots" / "snapshot-bad.json").write_text("not json")
    again = SnapshotRecords(str(tmp_path))
    again.load()
    assert again.all() == {"snapshot-v1": rec()}
    assert "snapshot-bad.json" in again.errors() and os.path.exists(tmp_path / "snapshots" / "snapshot-bad.json")
    assert not os.path.exists(tmp_path / "snapshots" / "snapshot-x.json.tmp")
    again.remove("snapshot-v1")
    assert again.all() == {} and not os.path.exists(again.path_of("snapshot-v1"))


def test_an_unknown_outcome_is_sent_again_when_its_snapshot_is_gone_and_the_request_survives_the_journal():
    gone = world(snaps=())
    d = dc.decide(gone, {"pvc-u1": pv()}, READY, frozenset(), True, snapshot_records={},
                  snapshots_in_background={"snapshot-v1": DRIVER})
    assert kinds(d) == [("create_snapshot", "snapshot-v1")]
    # Still wanted, or recorded: the ordinary rules.
    d = dc.decide(world(), {"pvc-u1": pv()}, READY, frozenset(), True, snapshot_records={},
                  snapshots_in_background={"snapshot-v1": DRIVER})
    assert kinds(d) == [("create_snapshot", "snapshot-v1")]
    d = dc.decide(gone, {"pvc-u1": pv()}, READY, frozenset(), True, snapshot_records={"snapshot-v1": rec()},
                  snapshots_in_background={"snapshot-v1": DRIVER})
    assert kinds(d) == [("delete_snapshot", "snapshot-v1")]
    klass = vsc(**{"tier": "gold", sn.SECRET_NAME_KEY: "s", sn.SECRET_NAMESPACE_KEY: "ns"})
    req = sn.build_snapshot_request(vs(), klass, pv(), "demo/data")
    assert sn.SnapshotRequest.from_record_dict(req.to_record_dict()) == req
