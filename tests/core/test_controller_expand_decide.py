"""Expansion in the controller's pure ``decide`` (literal inputs): which bound claims are
expanded, by ControllerExpandVolume or the node-only (trivial) resizer, and which requests are
refused without any call (a shrink, a class without allowVolumeExpansion, no EXPAND_VOLUME)."""

from __future__ import annotations

import dataclasses

from volumemanager.controller import decide as dc
from volumemanager.controller.records import ANN_CLAIM_UID, ANN_REQUESTED_BYTES
from volumemanager.manifests import models as m

ORIGIN = m.Origin("test.yaml", 1)
DRIVER = "csi.example.com"
GI = 1 << 30
CONTROLLER = {DRIVER: dc.DriverView(True, frozenset({"CREATE_DELETE_VOLUME", "EXPAND_VOLUME"}))}


def sc(allow: bool = True) -> m.StorageClass:
    return m.StorageClass("fast", DRIVER, {}, "Delete", "Immediate", allow, (), (), ORIGIN)


def pvc(request: int) -> m.PersistentVolumeClaim:
    return m.PersistentVolumeClaim("demo", "data", None, None, ("ReadWriteOnce",), ORIGIN, uid="u1",
                                   storage_class_name="fast", request_bytes=request)


def record(capacity: int = GI, requested: int | None = GI) -> m.PersistentVolume:
    src = m.CSISource(DRIVER, "handle-1", "xfs", {}, False)
    ann = {ANN_CLAIM_UID: "u1"}
    if requested is not None:
        ann[ANN_REQUESTED_BYTES] = str(requested)
    return m.PersistentVolume("pvc-u1", src, m.FILESYSTEM, (), ("ReadWriteOnce",), capacity, ("demo", "data"), ORIGIN,
                              reclaim_policy="Delete", storage_class_name="fast", annotations=ann)


def decide(request: int, rec: m.PersistentVolume | None = None, allow: bool = True, drivers=CONTROLLER) -> dc.Decision:
    s = m.Snapshot({}, {}, {("demo", "data"): pvc(request)}, {}, (), 1, storageclasses={"fast": sc(allow)})
    return dc.decide(s, {"pvc-u1": rec or record()}, drivers, frozenset(), True)


def test_raised_request_is_expanded_once_the_capacity_follows():
    d = decide(2 * GI)
    assert [(a.kind, a.name, a.claim) for a in d.actions] == [("expand", "pvc-u1", "demo/data")]
    assert "ControllerExpandVolume" in d.actions[0].detail and not d.refused
    assert decide(2 * GI, record(capacity=2 * GI, requested=2 * GI)).actions == []


def test_node_only_driver_gets_the_trivial_resizer():
    drivers = {DRIVER: dc.DriverView(True, frozenset({"CREATE_DELETE_VOLUME"}), frozenset({"EXPAND_VOLUME"}))}
    d = decide(2 * GI, drivers=drivers)
    assert [a.kind for a in d.actions] == ["expand"] and "node only" in d.actions[0].detail


def test_refusals_call_nothing():
    d = decide(2 * GI, allow=False)
    assert d.actions == [] and d.refused["pvc-u1"][0] == dc.EXPANSION_NOT_ALLOWED
    assert "storageclass fast does not allow volume expansion" in d.refused["pvc-u1"][1]
    d = decide(GI // 2)
    assert d.actions == [] and d.refused["pvc-u1"][0] == dc.SHRINK_REFUSED
    no_expand = {DRIVER: dc.DriverView(True, frozenset({"CREATE_DELETE_VOLUME"}))}
    d = decide(2 * GI, drivers=no_expand)
    assert d.actions == [] and d.refused["pvc-u1"][0] == dc.EXPANSION_NOT_SUPPORTED


def test_a_driver_that_rounded_up_is_no_shrink():
    # Provisioned for 1 GiB, the driver gave 1.5 GiB: a request of 1.2 GiB needs nothing.
    rec = record(capacity=3 * GI // 2, requested=GI)
    d = decide(GI + GI // 5, rec)
    assert d.actions == [] and not d.refused
    # Without the requested annotation (an older record), the capacity is the floor.
    d = decide(GI // 2, record(requested=None))
    assert d.refused["pvc-u1"][0] == dc.SHRINK_REFUSED


def test_statically_bound_or_unregistered():
    s = m.Snapshot({}, {}, {("demo", "data"): dataclasses.replace(pvc(2 * GI), volume_name="pvc-u1")}, {}, (), 1,
                   storageclasses={"fast": sc()})
    assert dc.decide(s, {"pvc-u1": record()}, CONTROLLER, frozenset(), True).actions == []
    d = decide(2 * GI, drivers={})
    assert d.actions == [] and "to register" in d.waiting["pvc-u1"]
