"""Volume snapshots and restores as external-snapshotter sees them (pure functions).

* A VolumeSnapshot of a bound claim gets ``CreateSnapshot`` named ``snapshot-<snapshot uid>``
  (the sidecar's default name: deterministic, so a retry or a restart after a crash finds the
  same snapshot), with the class parameters minus the ``csi.storage.k8s.io/`` keys and the
  snapshotter secret of ``csi.storage.k8s.io/snapshotter-secret-name``/``-namespace``.
* A snapshot the driver answers "not ready" for is followed by sending ``CreateSnapshot`` again
  (same name, same answer: the sidecar's way of polling) with backoff until ``ready_to_use``.
* A VolumeSnapshot that is removed: with deletionPolicy Delete, ``DeleteSnapshot`` (only for a
  snapshot with our record); with Retain the snapshot stays, shown as ``Retained``.
* A claim with a ``dataSource`` gets CreateVolume with ``volume_content_source``: the snapshot id
  of a *ready* VolumeSnapshot of the same driver (and a request no smaller than its restore
  size), or, for a PVC (a clone), the volume id of the bound source claim's PV of the same
  driver and volumeMode, when the driver has CLONE_VOLUME (external-provisioner's rules).

``decide_snapshots`` is the snapshot half of ``decide.decide``; ``content_source`` is asked by
``decide`` for every claim it is about to provision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from operation_executor.errors import FinalError
from operation_executor.types import SecretRef
from volumemanager.controller import claims as cl
from volumemanager.controller.snapshot_records import SnapshotRecord
from volumemanager.manifests import models as m

if TYPE_CHECKING:
    from volumemanager.controller.decide import Decision, DriverView

CREATE_SNAPSHOT = "create_snapshot"
DELETE_SNAPSHOT = "delete_snapshot"
NAME_PREFIX = "snapshot-"
CREATE_DELETE_SNAPSHOT = "CREATE_DELETE_SNAPSHOT"
CLONE_VOLUME = "CLONE_VOLUME"
SECRET_NAME_KEY = cl.PREFIX + "snapshotter-secret-name"
SECRET_NAMESPACE_KEY = cl.PREFIX + "snapshotter-secret-namespace"
SNAPSHOT_KIND = "VolumeSnapshot"
# Phases shown in status --json snapshots[].
PENDING, READY, RETAINED, DELETING = "Pending", "Ready", "Retained", "Deleting"


def snapshot_name(vs: m.VolumeSnapshot) -> str:
    """The CreateSnapshot name (and record/operation key) of a VolumeSnapshot."""
    return NAME_PREFIX + vs.uid


def snapshot_class_of(vs: m.VolumeSnapshot, snap: m.Snapshot, driver: str | None) -> m.VolumeSnapshotClass | None:
    """The class named by the snapshot; without a name, the one class of the source's driver
    (the manifests carry no is-default-class annotation: two classes of a driver are ambiguous)."""
    if vs.volume_snapshot_class_name:
        return snap.volume_snapshot_class(vs.volume_snapshot_class_name)
    found = [c for c in snap.volumesnapshotclasses.values() if c.driver == driver]
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class SnapshotRequest:
    """What CreateSnapshot gets for one VolumeSnapshot (secret by reference), plus what its
    record keeps."""

    name: str
    driver: str
    source_volume_id: str
    parameters: dict[str, str] = field(default_factory=dict)
    secret_ref: SecretRef | None = None
    namespace: str = ""
    snapshot: str = ""
    uid: str = ""
    source_claim: str = ""
    source_pv: str = ""
    snapshot_class: str = ""
    deletion_policy: str = "Delete"

    def to_record_dict(self) -> dict:
        """For the CreateSnapshot intent: the same request after a restart (secret by name only)."""
        ref = self.secret_ref
        return {"name": self.name, "driver": self.driver, "source_volume_id": self.source_volume_id,
                "parameters": dict(self.parameters), "secret_name": ref.name if ref else "",
                "secret_namespace": ref.namespace if ref else "", "namespace": self.namespace,
                "snapshot": self.snapshot, "uid": self.uid, "source_claim": self.source_claim,
                "source_pv": self.source_pv, "snapshot_class": self.snapshot_class,
                "deletion_policy": self.deletion_policy}

    @classmethod
    def from_record_dict(cls, d: Mapping) -> SnapshotRequest:
        """``KeyError``/``TypeError``/``ValueError`` for an incomplete intent."""
        name, driver, source = str(d["name"]), str(d["driver"]), str(d["source_volume_id"])
        if not name.startswith(NAME_PREFIX) or not driver or not source:
            raise ValueError("name, driver and source_volume_id are required")
        ref = SecretRef(str(d["secret_namespace"]), str(d["secret_name"])) if d.get("secret_name") else None
        return cls(name, driver, source, {str(k): str(v) for k, v in dict(d.get("parameters") or {}).items()}, ref,
                   str(d.get("namespace") or ""), str(d.get("snapshot") or ""), str(d.get("uid") or ""),
                   str(d.get("source_claim") or ""), str(d.get("source_pv") or ""),
                   str(d.get("snapshot_class") or ""), str(d.get("deletion_policy") or "Delete"))

    @classmethod
    def from_record(cls, rec: SnapshotRecord) -> SnapshotRequest:
        """The same request again, to follow a snapshot that is not ready yet."""
        ref = SecretRef(rec.secret_namespace, rec.secret_name) if rec.secret_name and rec.secret_namespace else None
        return cls(rec.name, rec.driver, rec.source_volume_id, dict(rec.parameters), ref, rec.namespace,
                   rec.snapshot, rec.uid, rec.source_claim, rec.source_pv, rec.snapshot_class, rec.deletion_policy)


def _template(value: str, vs: m.VolumeSnapshot, where: str) -> str:
    tokens = {"volumesnapshotcontent.name": "snapcontent-" + vs.uid, "volumesnapshot.namespace": vs.namespace,
              "volumesnapshot.name": vs.name}
    out = value
    for token, sub in tokens.items():
        out = out.replace("${" + token + "}", sub)
    if "${" in out:
        raise FinalError(f"VolumeSnapshotClass parameter {where}: unknown template in {value!r}",
                         code="INVALID_PARAMETER")
    return out


def build_snapshot_request(vs: m.VolumeSnapshot, vsc: m.VolumeSnapshotClass, source_pv: m.PersistentVolume,
                           source_claim: str) -> SnapshotRequest:
    """The CreateSnapshot request of ``vs``; ``FinalError`` for what the sidecar refuses."""
    params: dict[str, str] = {}
    for key, value in vsc.parameters.items():
        if not key.startswith(cl.PREFIX):
            params[key] = value
        elif key not in (SECRET_NAME_KEY, SECRET_NAMESPACE_KEY):
            raise FinalError(f"VolumeSnapshotClass {vsc.name}: found unknown parameter key {key!r} with reserved "
                             f"namespace {cl.PREFIX}", code="INVALID_PARAMETER")
    ref = None
    if SECRET_NAME_KEY in vsc.parameters or SECRET_NAMESPACE_KEY in vsc.parameters:
        if SECRET_NAME_KEY not in vsc.parameters or SECRET_NAMESPACE_KEY not in vsc.parameters:
            raise FinalError(f"VolumeSnapshotClass {vsc.name}: {SECRET_NAME_KEY} and {SECRET_NAMESPACE_KEY} must be "
                             "given together", code="INVALID_PARAMETER")
        ref = SecretRef(_template(vsc.parameters[SECRET_NAMESPACE_KEY], vs, SECRET_NAMESPACE_KEY),
                        _template(vsc.parameters[SECRET_NAME_KEY], vs, SECRET_NAME_KEY))
    src = source_pv.source
    assert isinstance(src, m.CSISource) and src.volume_handle
    return SnapshotRequest(snapshot_name(vs), vsc.driver, src.volume_handle, params, ref, vs.namespace, vs.name,
                           vs.uid, source_claim, source_pv.name, vsc.name, vsc.deletion_policy)


def pv_of_claim(claim: m.PersistentVolumeClaim, snap: m.Snapshot,
                records: Mapping[str, m.PersistentVolume]) -> m.PersistentVolume | None:
    """The PV a claim is bound to: its ``volumeName`` in the manifests, or our provisioned one."""
    if claim.volume_name:
        return snap.pvs.get(claim.volume_name)
    from volumemanager.controller.records import ANN_CLAIM_UID

    pv = records.get(cl.volume_name(claim))
    return pv if pv is not None and pv.annotations.get(ANN_CLAIM_UID) == claim.uid else None


def _csi_handle(pv: m.PersistentVolume | None) -> tuple[str, str] | None:
    if pv is None or not isinstance(pv.source, m.CSISource) or not pv.source.volume_handle:
        return None
    return pv.source.driver, pv.source.volume_handle


def data_source_of(claim: m.PersistentVolumeClaim) -> m.TypedObjectReference | None:
    return claim.data_source_ref or claim.data_source


def content_source(claim: m.PersistentVolumeClaim, sc: m.StorageClass, snap: m.Snapshot,
                   records: Mapping[str, m.PersistentVolume], snapshot_records: Mapping[str, SnapshotRecord],
                   driver: DriverView) -> tuple[tuple[str, str] | None, str | None]:
    """(``("snapshot", id)`` / ``("volume", id)`` / None, what provisioning waits for / None)."""
    ref = data_source_of(claim)
    if ref is None:
        return None, None
    key = f"{claim.namespace}/{ref.name}"
    if ref.kind == SNAPSHOT_KIND:
        vs = snap.volume_snapshot(claim.namespace, ref.name)
        if vs is None:
            return None, f"volumesnapshot {key} to exist (the claim's dataSource)"
        rec = snapshot_records.get(snapshot_name(vs))
        if rec is None or not rec.ready_to_use:
            return None, f"volumesnapshot {key} to be ready"
        if rec.driver != sc.provisioner:
            return None, (f"a StorageClass of driver {rec.driver}: volumesnapshot {key} was taken by {rec.driver}, "
                          f"class {sc.name} provisions with {sc.provisioner}")
        if rec.restore_size_bytes and claim.request_bytes is not None and claim.request_bytes < rec.restore_size_bytes:
            return None, (f"a request of at least {rec.restore_size_bytes} bytes (the restore size of volumesnapshot "
                          f"{key}); the claim asks for {claim.request_bytes}")
        return ("snapshot", rec.snapshot_id), None
    source = snap.pvcs.get((claim.namespace, ref.name))
    if source is None:
        return None, f"claim {key} to exist (the claim's dataSource)"
    handle = _csi_handle(pv_of_claim(source, snap, records))
    if handle is None:
        return None, f"claim {key} (the clone's source) to be bound to a CSI volume"
    if CLONE_VOLUME not in driver.controller_capabilities:
        return None, f"CSI driver {sc.provisioner} to have the CLONE_VOLUME capability (to clone claim {key})"
    if handle[0] != sc.provisioner:
        return None, (f"a StorageClass of driver {handle[0]}: claim {key} is a volume of {handle[0]}, "
                      f"class {sc.name} provisions with {sc.provisioner}")
    if (source.volume_mode or m.FILESYSTEM) != (claim.volume_mode or m.FILESYSTEM):
        return None, f"the same volumeMode as claim {key} (a clone keeps its source's volumeMode)"
    pv = pv_of_claim(source, snap, records)
    if pv is not None and pv.capacity_bytes and claim.request_bytes is not None and claim.request_bytes < pv.capacity_bytes:
        return None, (f"a request of at least {pv.capacity_bytes} bytes (the size of claim {key}); the claim asks "
                      f"for {claim.request_bytes}")
    return ("volume", handle[1]), None


def decide_snapshots(snap: m.Snapshot, records: Mapping[str, m.PersistentVolume],
                     snapshot_records: Mapping[str, SnapshotRecord], drivers: Mapping[str, DriverView],
                     ready_to_delete: bool, out: Decision, in_background: Mapping[str, str] = {}) -> None:
    """Add the snapshot actions (create, follow, delete) and waits of ``snap`` to ``out``.

    ``in_background``: snapshot name -> driver of each CreateSnapshot whose outcome is unknown
    (uncertain, or interrupted by a crash). If its VolumeSnapshot is gone it is sent again anyway:
    then the snapshot has a record and is deleted (or retained) by its deletion policy, not leaked."""
    from volumemanager.controller.decide import ControllerAction, resend_uncertain

    live_names = {snapshot_name(v) for v in snap.volumesnapshots.values()}
    resend_uncertain(in_background, snapshot_records.keys() | live_names, drivers, out, CREATE_SNAPSHOT,  # else below
                     lambda name: f"CreateSnapshot {name} again: its outcome was unknown and its VolumeSnapshot "
                                  "is gone (the snapshot is then deleted or retained)")
    live = set()
    for vs in sorted(snap.volumesnapshots.values(), key=lambda v: v.key):
        name = snapshot_name(vs)
        live.add(name)
        rec = snapshot_records.get(name)
        if rec is not None and rec.ready_to_use:
            continue
        if rec is not None:  # created, not ready yet: follow it (its own source, even if the claim went)
            view = drivers.get(rec.driver)
            if view is None or not view.has_controller:
                out.waiting[name] = f"CSI driver {rec.driver} (with its Controller service) to register"
                continue
            out.actions.append(ControllerAction(CREATE_SNAPSHOT, name, rec.driver, rec.source_claim,
                                                f"CreateSnapshot {name} again: {rec.snapshot_id} is not ready yet"))
            continue
        claim_key = f"{vs.namespace}/{vs.source_pvc_name}"
        claim = snap.pvcs.get((vs.namespace, vs.source_pvc_name))
        if claim is None:
            out.waiting[name] = f"claim {claim_key} (the snapshot's source) to exist"
            continue
        handle = _csi_handle(pv_of_claim(claim, snap, records))
        if handle is None:
            out.waiting[name] = f"claim {claim_key} (the snapshot's source) to be bound to a CSI volume"
            continue
        vsc = snapshot_class_of(vs, snap, handle[0])
        if vsc is None:
            out.waiting[name] = (f"VolumeSnapshotClass {vs.volume_snapshot_class_name}" if vs.volume_snapshot_class_name
                                 else f"a VolumeSnapshotClass of driver {handle[0]} (exactly one, or name it)")
            continue
        if vsc.driver != handle[0]:
            out.waiting[name] = (f"a VolumeSnapshotClass of driver {handle[0]}: class {vsc.name} is of {vsc.driver}")
            continue
        view = drivers.get(vsc.driver)
        if view is None:
            out.waiting[name] = f"CSI driver {vsc.driver} to register"
            continue
        if not view.has_controller or CREATE_DELETE_SNAPSHOT not in view.controller_capabilities:
            out.waiting[name] = f"CSI driver {vsc.driver} to have the {CREATE_DELETE_SNAPSHOT} capability"
            continue
        out.actions.append(ControllerAction(CREATE_SNAPSHOT, name, vsc.driver, claim_key,
                                            f"CreateSnapshot {name} of claim {claim_key} for volumesnapshot "
                                            f"{vs.key} (class {vsc.name})"))
    for name, rec in sorted(snapshot_records.items()):
        if name in live or rec.deletion_policy != "Delete":
            continue  # wanted, or Retained
        view = drivers.get(rec.driver)
        if not ready_to_delete:
            out.waiting[name] = "the desired state to be read whole (nothing is deleted until then)"
        elif view is None or not view.has_controller:
            out.waiting[name] = f"CSI driver {rec.driver} (with its Controller service) to register"
        else:
            out.actions.append(ControllerAction(DELETE_SNAPSHOT, name, rec.driver, rec.source_claim,
                                                f"DeleteSnapshot {rec.snapshot_id} (volumesnapshot "
                                                f"{rec.namespace}/{rec.snapshot} is gone, deletion policy Delete)"))
