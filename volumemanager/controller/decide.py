"""The controller's pure decision: which claims to provision, which volumes to delete.

``decide`` looks at plain values only (the claims of the desired state, the provisioned PV
records, what the registered drivers can do, which PVs the node still uses) and returns
actions plus, for every claim or volume it does not act on, what it waits for. It starts
nothing and reads nothing, so ``plan`` can show it and tests can call it with literals.

The safety rules live here, in one place:

* a volume is deleted only when it has our provisioned record (``records``), its claim is
  gone (by uid), its reclaim policy is Delete, the desired state has been read whole
  (``ready_to_delete``) and the node no longer uses it (``in_use``: no mount, no stage, no
  desired pod);
* a claim is provisioned once: the record of ``pvc-<uid>`` (or a manifest PV of that name)
  means done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping

from volumemanager.controller import claims as cl
from volumemanager.controller.records import ANN_CLAIM_UID, ANN_NODE_EXPAND_BYTES, ANN_REQUESTED_BYTES  # noqa: F401
from volumemanager.controller import snapshots as sn
from volumemanager.controller.snapshot_records import SnapshotRecord
from volumemanager.manifests import models as m

PROVISION = "provision"
DELETE = "delete"
EXPAND = "expand"
EXPAND_VOLUME = "EXPAND_VOLUME"
# A bound claim whose expansion is refused (nothing is called): the codes shown as its error.
EXPANSION_NOT_ALLOWED = "EXPANSION_NOT_ALLOWED"
SHRINK_REFUSED = "VOLUME_SHRINK_REFUSED"
EXPANSION_NOT_SUPPORTED = "EXPANSION_NOT_SUPPORTED"
CREATE_DELETE_VOLUME = "CREATE_DELETE_VOLUME"
NO_PROVISIONER = "kubernetes.io/no-provisioner"


@dataclass(frozen=True)
class DriverView:
    """What ``decide`` needs to know of one registered driver."""

    has_controller: bool
    controller_capabilities: frozenset[str] = frozenset()
    node_capabilities: frozenset[str] = frozenset()  # NodeGetCapabilities (the trivial resizer's EXPAND_VOLUME)


@dataclass(frozen=True)
class ControllerAction:
    """One controller step to start. ``name`` is the volume's (PV) name and the operation key."""

    kind: str  # provision | delete | expand | (attach, snapshot: added by their steps)
    name: str
    driver: str
    claim: str | None  # "namespace/name"
    detail: str
    claim_uid: str | None = None
    # provision from a dataSource: ("snapshot", snapshot id) or ("volume", volume id) (snapshots.py)
    content_source: tuple[str, str] | None = None

    def to_dict(self, blocked_by: str | None = None) -> dict:
        return {
            "action": self.kind,
            "volume_id": self.name,
            "pod": None,
            "pod_uid": None,
            "volume": self.claim,
            "plugin": self.driver,
            "detail": self.detail,
            "blocked_by": blocked_by,
        }


@dataclass
class Decision:
    actions: list[ControllerAction] = field(default_factory=list)
    # volume name -> what it waits for (no action now)
    waiting: dict[str, str] = field(default_factory=dict)
    # volume name -> (code, message): a claim's wish refused without any call (a shrink, a
    # class that does not allow expansion); shown as the claim's error.
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)


def claim_uid_of(pv: m.PersistentVolume) -> str | None:
    return pv.annotations.get(ANN_CLAIM_UID)


def decide(
    snap: m.Snapshot,
    records: Mapping[str, m.PersistentVolume],
    drivers: Mapping[str, DriverView],
    in_use: frozenset[str],
    ready_to_delete: bool,
    in_background: Mapping[str, str] = {},
    snapshot_records: Mapping[str, SnapshotRecord] | None = None,
    snapshots_in_background: Mapping[str, str] = {},
) -> Decision:
    """Actions for every claim and every provisioned volume of ``snap`` (the desired state
    *without* our records merged in).

    ``in_background``: volume name -> driver of each CreateVolume whose outcome is unknown
    (uncertain). The driver may have made the volume, so it is sent again even after its claim
    is gone, as external-provisioner does: then the volume has a record, is Released and,
    with Delete, deleted. Without that the volume would leak."""
    out = Decision()
    consumers: frozenset[tuple[str, str]] | None = None  # walked only for a WaitForFirstConsumer claim
    live_uids = {c.uid for c in snap.pvcs.values()}
    live_names = {cl.volume_name(c) for c in snap.pvcs.values()}
    # (done, or the claim is still there and handled below)
    resend_uncertain(in_background, records.keys() | live_names, drivers, out, PROVISION,
                     lambda name: f"CreateVolume {name} again: its outcome was unknown and its claim is gone "
                                  "(the volume is then released)")
    for claim in sorted(snap.pvcs.values(), key=lambda c: c.key):
        if claim.volume_name:
            continue  # bound in the manifests: not ours to provision
        sc = cl.storage_class_of(claim, snap)
        if sc is None or sc.provisioner == NO_PROVISIONER:
            continue
        name = cl.volume_name(claim)
        record = records.get(name)
        if record is not None and claim_uid_of(record) == claim.uid:
            continue  # provisioned and bound
        if name in snap.pvs:
            continue  # a PV of that name exists in the manifests: never provision over it
        driver = drivers.get(sc.provisioner)
        if driver is None:
            out.waiting[name] = f"CSI driver {sc.provisioner} to register"
            continue
        if not driver.has_controller:
            out.waiting[name] = f"CSI driver {sc.provisioner} to serve a Controller service"
            continue
        if CREATE_DELETE_VOLUME not in driver.controller_capabilities:
            out.waiting[name] = f"CSI driver {sc.provisioner} to have the CREATE_DELETE_VOLUME capability"
            continue
        if sc.volume_binding_mode == cl.WAIT_FOR_FIRST_CONSUMER and consumers is None:
            consumers = cl.claim_consumers(snap)  # every pod: only when a claim waits for one
        if sc.volume_binding_mode == cl.WAIT_FOR_FIRST_CONSUMER and (claim.namespace, claim.name) not in consumers:
            out.waiting[name] = "first consumer (StorageClass volumeBindingMode WaitForFirstConsumer): no pod uses the claim"
            continue
        source, source_wait = sn.content_source(claim, sc, snap, records, snapshot_records or {}, driver)
        if source_wait is not None:
            out.waiting[name] = source_wait  # a restore or clone whose source is not usable yet
            continue
        origin = f", from {source[0]} {source[1]}" if source is not None else ""
        out.actions.append(ControllerAction(PROVISION, name, sc.provisioner, claim.key,
                                            f"CreateVolume {name} for claim {claim.key} (class {sc.name}{origin})",
                                            claim.uid, content_source=source))
    if snapshot_records is not None:
        sn.decide_snapshots(snap, records, snapshot_records, drivers, ready_to_delete, out, snapshots_in_background)
    _decide_expansions(snap, records, drivers, out)
    for name, pv in sorted(records.items()):
        uid = claim_uid_of(pv)
        if uid in live_uids:
            continue
        if pv.reclaim_policy != "Delete":
            continue  # Released, kept (Retain)
        driver_name = pv.source.driver if isinstance(pv.source, m.CSISource) else ""
        if not ready_to_delete:
            out.waiting[name] = "the desired state to be read whole (nothing is deleted until then)"
        elif name in in_use:
            out.waiting[name] = "the node to stop using the volume (unpublish and unstage first)"
        elif driver_name not in drivers or not drivers[driver_name].has_controller:
            out.waiting[name] = f"CSI driver {driver_name} (with its Controller service) to register"
        else:
            out.actions.append(ControllerAction(DELETE, name, driver_name, _claim_ref(pv),
                                                f"DeleteVolume {_handle(pv)} (claim {_claim_ref(pv)} is gone, "
                                                "reclaim policy Delete)", uid))
    return out


def resend_uncertain(in_background: Mapping[str, str], handled: Collection[str], drivers: Mapping[str, DriverView],
                     out: Decision, kind: str, detail: Callable[[str], str]) -> None:
    """Send again each create whose outcome is unknown (name -> driver in ``in_background``)
    and that nothing else handles: the driver may have made it, so the same request goes out
    again (its idempotency returns the same object) and the object is then cleaned up like
    any other. Waits for the driver's Controller service when it is not there."""
    for name, driver_name in sorted(in_background.items()):
        if name in handled:
            continue
        view = drivers.get(driver_name)
        if view is None or not view.has_controller:
            out.waiting[name] = f"CSI driver {driver_name} (with its Controller service) to register"
            continue
        out.actions.append(ControllerAction(kind, name, driver_name, None, detail(name)))


def requested_bytes_of(pv: m.PersistentVolume) -> int:
    """The request the volume was last provisioned or expanded for (the shrink rule compares
    with it, not with the capacity, which a driver may round up)."""
    value = pv.annotations.get(ANN_REQUESTED_BYTES)
    if value and value.isdigit():
        return int(value)
    return int(pv.capacity_bytes or 0)


def _decide_expansions(snap: m.Snapshot, records: Mapping[str, m.PersistentVolume],
                       drivers: Mapping[str, DriverView], out: Decision) -> None:
    """The external-resizer's part: a bound claim whose request exceeds its provisioned
    volume's capacity is expanded (ControllerExpandVolume when the driver has the controller
    EXPAND_VOLUME, else the trivial resizer when it has the node one); a request below the
    volume's is refused (volumes never shrink), as is one whose class does not allow it."""
    by_uid = {c.uid: c for c in snap.pvcs.values() if c.uid}
    for name, pv in sorted(records.items()):
        claim = by_uid.get(claim_uid_of(pv) or "")
        if claim is None or claim.request_bytes is None or claim.volume_name:
            continue
        if not isinstance(pv.source, m.CSISource) or not pv.source.volume_handle:
            continue
        want = int(claim.request_bytes)
        had = requested_bytes_of(pv)
        capacity = int(pv.capacity_bytes or 0)
        if want < had:
            out.refused[name] = (SHRINK_REFUSED, f"claim {claim.key} requests {want} bytes, less than the {had} "
                                 f"bytes of persistentvolume {name}: volumes are never shrunk (nothing was called; "
                                 f"set the request back to at least {had})")
            continue
        if want <= capacity:
            continue
        sc = cl.storage_class_of(claim, snap)
        sc_name = claim.storage_class_name or pv.storage_class_name or ""
        if sc is None or not sc.allow_volume_expansion:
            out.refused[name] = (EXPANSION_NOT_ALLOWED, f"storageclass {sc_name} does not allow volume expansion "
                                 f"(claim {claim.key} requests {want} bytes, persistentvolume {name} has {capacity})")
            continue
        driver_name = pv.source.driver
        view = drivers.get(driver_name)
        if view is None:
            out.waiting[name] = f"CSI driver {driver_name} to register (to expand to {want} bytes)"
        elif view.has_controller and EXPAND_VOLUME in view.controller_capabilities:
            out.actions.append(ControllerAction(EXPAND, name, driver_name, claim.key,
                                                f"ControllerExpandVolume {pv.source.volume_handle} from {capacity} "
                                                f"to {want} bytes (claim {claim.key})", claim.uid))
        elif EXPAND_VOLUME in view.node_capabilities:
            out.actions.append(ControllerAction(EXPAND, name, driver_name, claim.key,
                                                f"expand {name} from {capacity} to {want} bytes on the node only "
                                                f"(NodeExpandVolume; the driver has no controller EXPAND_VOLUME)",
                                                claim.uid))
        else:
            out.refused[name] = (EXPANSION_NOT_SUPPORTED, f"CSI driver {driver_name} has no EXPAND_VOLUME "
                                 f"capability (controller or node): claim {claim.key} cannot grow to {want} bytes")


def _claim_ref(pv: m.PersistentVolume) -> str | None:
    return f"{pv.claim_ref[0]}/{pv.claim_ref[1]}" if pv.claim_ref else None


def _handle(pv: m.PersistentVolume) -> str:
    return pv.source.volume_handle if isinstance(pv.source, m.CSISource) else pv.name
