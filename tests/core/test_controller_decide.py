"""The controller's pure pieces with literal inputs: which claims are provisioned, which volumes
deleted (and never deleted), and the CreateVolume request as external-provisioner builds it."""

from __future__ import annotations

import pytest

from operation_executor.errors import FinalError
from volumemanager.controller import claims as cl
from volumemanager.controller import decide as dc
from volumemanager.controller.overlay import merge_provisioned
from volumemanager.controller.records import ANN_CLAIM_UID
from volumemanager.manifests import models as m

ORIGIN = m.Origin("test.yaml", 1)
DRIVER = "csi.example.com"
READY = {DRIVER: dc.DriverView(True, frozenset({"CREATE_DELETE_VOLUME"}))}


def sc(binding: str = "Immediate", reclaim: str = "Delete", **params: str) -> m.StorageClass:
    return m.StorageClass("fast", DRIVER, dict(params), reclaim, binding, False, ("noatime",), (), ORIGIN)


def pvc(name: str = "data", uid: str = "u1", volume_name: str | None = None, sc_name: str | None = "fast",
        modes: tuple[str, ...] = ("ReadWriteOnce",), mode: str | None = None) -> m.PersistentVolumeClaim:
    return m.PersistentVolumeClaim("demo", name, volume_name, mode, modes, ORIGIN, uid=uid,
                                   storage_class_name=sc_name, request_bytes=1 << 30)


def pod(claim: str = "data") -> m.Pod:
    return m.Pod("demo", "app", "p1", (m.PodVolume("vol", m.PVCSource(claim, False)),), ORIGIN)


def record(name: str = "pvc-u1", uid: str = "u1", reclaim: str = "Delete") -> m.PersistentVolume:
    src = m.CSISource(DRIVER, "handle-1", "ext4", {}, False)
    return m.PersistentVolume(name, src, m.FILESYSTEM, (), ("ReadWriteOnce",), 1 << 30, ("demo", "data"), ORIGIN,
                              reclaim_policy=reclaim, storage_class_name="fast", annotations={ANN_CLAIM_UID: uid})


def snap(claims=(), pods=(), classes=(sc(),), pvs=()) -> m.Snapshot:
    return m.Snapshot({p.uid: p for p in pods}, {v.name: v for v in pvs}, {(c.namespace, c.name): c for c in claims},
                      {}, (), 1, storageclasses={c.name: c for c in classes})


def kinds(decision: dc.Decision) -> list[tuple[str, str]]:
    return [(a.kind, a.name) for a in decision.actions]


def test_immediate_claim_is_provisioned_once():
    assert kinds(dc.decide(snap([pvc()]), {}, READY, frozenset(), True)) == [("provision", "pvc-u1")]
    assert kinds(dc.decide(snap([pvc()]), {"pvc-u1": record()}, READY, frozenset(), True)) == []


def test_wait_for_first_consumer_waits_for_a_pod():
    s = snap([pvc()], classes=(sc("WaitForFirstConsumer"),))
    d = dc.decide(s, {}, READY, frozenset(), True)
    assert d.actions == [] and "first consumer" in d.waiting["pvc-u1"]
    s = snap([pvc()], pods=[pod()], classes=(sc("WaitForFirstConsumer"),))
    assert kinds(dc.decide(s, {}, READY, frozenset(), True)) == [("provision", "pvc-u1")]


def test_not_ours_to_provision():
    assert dc.decide(snap([pvc(volume_name="static-pv")]), {}, READY, frozenset(), True).actions == []
    assert dc.decide(snap([pvc(sc_name=None)]), {}, READY, frozenset(), True).actions == []
    manifest_pv = record()
    assert dc.decide(snap([pvc()], pvs=[manifest_pv]), {}, READY, frozenset(), True).actions == []


def test_driver_without_controller_or_capability_waits():
    d = dc.decide(snap([pvc()]), {}, {DRIVER: dc.DriverView(False)}, frozenset(), True)
    assert d.actions == [] and "Controller service" in d.waiting["pvc-u1"]
    d = dc.decide(snap([pvc()]), {}, {DRIVER: dc.DriverView(True, frozenset())}, frozenset(), True)
    assert d.actions == [] and "CREATE_DELETE_VOLUME" in d.waiting["pvc-u1"]
    assert "to register" in dc.decide(snap([pvc()]), {}, {}, frozenset(), True).waiting["pvc-u1"]


def test_delete_only_when_released_not_in_use_and_desired_state_read():
    gone = snap([])
    assert kinds(dc.decide(gone, {"pvc-u1": record()}, READY, frozenset(), True)) == [("delete", "pvc-u1")]
    d = dc.decide(gone, {"pvc-u1": record()}, READY, frozenset({"pvc-u1"}), True)
    assert d.actions == [] and "stop using" in d.waiting["pvc-u1"]
    d = dc.decide(gone, {"pvc-u1": record()}, READY, frozenset(), False)
    assert d.actions == [] and "read whole" in d.waiting["pvc-u1"]
    assert dc.decide(gone, {"pvc-u1": record(reclaim="Retain")}, READY, frozenset(), True).actions == []
    # The claim re-created under the same name is another claim (uid): the old volume is released.
    assert ("delete", "pvc-u1") in kinds(dc.decide(snap([pvc(uid="u2")]), {"pvc-u1": record()}, READY,
                                                    frozenset(), True))


def test_uncertain_create_of_a_gone_claim_is_sent_again():
    d = dc.decide(snap([]), {}, READY, frozenset(), True, in_background={"pvc-u1": DRIVER})
    assert kinds(d) == [("provision", "pvc-u1")]
    assert dc.decide(snap([]), {"pvc-u1": record(reclaim="Retain")}, READY, frozenset(), True,
                     in_background={"pvc-u1": DRIVER}).actions == []


def test_request_like_external_provisioner():
    s = sc(**{"csi.storage.k8s.io/fstype": "xfs", "type": "ssd",
              "csi.storage.k8s.io/provisioner-secret-name": "${pvc.name}-creds",
              "csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.namespace}",
              "csi.storage.k8s.io/node-stage-secret-name": "x", "csi.storage.k8s.io/node-stage-secret-namespace": "y"})
    req = cl.build_request(pvc(modes=("ReadWriteOnce", "ReadOnlyMany")), s)
    assert req.name == "pvc-u1" and req.required_bytes == 1 << 30 and req.parameters == {"type": "ssd"}
    assert req.capabilities == ((False, "SINGLE_NODE_WRITER", "xfs", ("noatime",)),
                                (False, "MULTI_NODE_READER_ONLY", "xfs", ("noatime",)))
    assert (req.secret_ref.namespace, req.secret_ref.name) == ("demo", "data-creds")
    block = cl.build_request(pvc(mode=m.BLOCK), s)
    assert block.capabilities == ((True, "SINGLE_NODE_WRITER", "", ()),) and block.fs_type == ""
    snmw = cl.build_request(pvc(modes=("ReadWriteOncePod",)), s, single_node_multi_writer=True)
    assert snmw.capabilities[0][1] == "SINGLE_NODE_SINGLE_WRITER"


@pytest.mark.parametrize("params, words", [
    ({"csi.storage.k8s.io/unknown": "x"}, "reserved namespace"),
    ({"csi.storage.k8s.io/provisioner-secret-name": "a"}, "together"),
    ({"csi.storage.k8s.io/provisioner-secret-name": "${pvc.annotations['x']}",
      "csi.storage.k8s.io/provisioner-secret-namespace": "ns"}, "unknown template"),
    ({"csi.storage.k8s.io/fstype": "ext4", "fstype": "xfs"}, "twice"),
])
def test_refused_parameters_are_final(params, words):
    with pytest.raises(FinalError) as e:
        cl.build_request(pvc(), sc(**params))
    assert words in str(e.value) and e.value.code == "INVALID_PARAMETER"


def test_overlay_binds_only_the_claim_with_the_recorded_uid():
    merged = merge_provisioned(snap([pvc()]), {"pvc-u1": record()}, 7)
    assert merged.pvcs[("demo", "data")].volume_name == "pvc-u1" and "pvc-u1" in merged.pvs
    assert merged.generation == 7
    other = merge_provisioned(snap([pvc(uid="u2")]), {"pvc-u1": record()}, 8)
    assert other.pvcs[("demo", "data")].volume_name is None
