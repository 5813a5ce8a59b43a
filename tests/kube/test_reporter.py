"""The reporter against the fake API server, through lightkube (nothing mocked): Events
aggregated and rate limited with the explain cause chain, volumesInUse as a merge patch of that
field only, CSINode and the Node's CSI annotation and topology labels as drivers come and go,
and failures (API down, 403, no Node yet) retried without blocking anything.

Operation outcomes come from a real OperationExecutor running failing operations; drivers from
a real DriverRegistry. The API server is the only fake.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from operation_executor.errors import FinalError
from operation_executor.executor import OperationExecutor, OperationKey, OperationOutcome
from operation_executor.types import PodRef, VolumeSpec
from tests.daemon_harness import wait_until
from tests.fake_apiserver.conftest import fake_apiserver, kubeconfig  # noqa: F401 - pytest fixtures
from volumemanager.csi.registry import DriverInfo, DriverRegistry
from volumemanager.kube import events as ev
from volumemanager.kube.config import ApiServerConfig, make_client
from volumemanager.kube.csinode import NODE_ID_ANNOTATION
from volumemanager.kube.node_status import volumes_in_use
from volumemanager.kube.reporter import (EventTarget, Reporter, ReporterInputs, ReporterTuning, event_for,
                                         stable_lines)

NODE = "n1"
POD = PodRef("uid-1", "demo", "web")
RBAC = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "rbac.yaml"
HAS_TOPOLOGY = "topology" in {f.name for f in dataclasses.fields(DriverInfo)}

FAST = dict(backoff_initial=0.05, backoff_max=0.3, debounce=0.02, in_use_poll=0.1, client_timeout=3.0)


class _Clock:
    """The executor's clock, moved on by hand so every retry is past its backoff."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _node(fake, labels=None, annotations=None, status=None):
    return fake.upsert({"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": NODE, "labels": labels or {}, "annotations": annotations or {}},
                        "status": status or {}})


def _driver(name, node_id, topology=(), max_volumes=0):
    kw = dict(name=name, endpoint=f"unix:///tmp/{name}.sock", node_id=node_id, capabilities=frozenset(),
              max_volumes=max_volumes, source="static", registered_at=time.time())
    if HAS_TOPOLOGY:
        kw["topology"] = tuple(topology)
    return DriverInfo(**kw)


@pytest.fixture
def reporters():
    made: list[Reporter] = []
    yield made
    for r in made:
        r.stop()


def _start(kubeconfig, reporters, inputs, **tuning):  # noqa: F811
    cfg = ApiServerConfig(kubeconfig=str(kubeconfig))
    r = Reporter(lambda: make_client(cfg, timeout=3.0), NODE, inputs, ReporterTuning(**{**FAST, **tuning}))
    reporters.append(r)
    return r.start()


def _fail_n(executor: OperationExecutor, clock: _Clock, n: int, volume: str = "vol-1", pod_uid: str | None = "uid-1",
            operation: str = "mount_volume", error: BaseException | None = None) -> None:
    def boom():
        raise error or FinalError("mount(2) of /dev/loop9 failed: wrong fs type", code="MOUNT_FAILED")

    for _ in range(n):
        clock.t += 10_000  # past any backoff
        executor.run(OperationKey(volume, pod_uid), operation, boom, plugin="kubernetes.io/csi")
        assert executor.wait_idle(10)


def _events(fake):
    return fake.list("Event", "demo")


# --- Events ----------------------------------------------------------------------------------

def test_ten_identical_failures_are_one_event_with_a_count_and_the_cause_chain(fake_apiserver, kubeconfig, reporters):  # noqa: F811
    _node(fake_apiserver)
    clock = _Clock()
    executor = OperationExecutor(clock=clock)
    calls = {"n": 0}

    def explain(pod, volume):
        calls["n"] += 1  # the times and countdowns change from one retry to the next
        return ["not mounted",
                f"last error from NodeStageVolume: MOUNT_FAILED: wrong fs type since 2026-11-28T10:00:0{calls['n'] % 10}Z "
                f"({calls['n']}s ago)",
                f"next retry in {calls['n']}.5 s"]

    inputs = ReporterInputs(
        volumes_in_use=lambda: [], add_completion_callback=executor.add_completion_callback,
        event_targets=lambda o: [EventTarget(POD, "data", False, "NodeStageVolume")], explain=explain)
    r = _start(kubeconfig, reporters, inputs)
    _fail_n(executor, clock, 10)
    wait_until(lambda: _events(fake_apiserver) and _events(fake_apiserver)[0].get("count") == 10,
               what="one Event with count 10")
    time.sleep(0.3)
    evs = _events(fake_apiserver)
    assert len(evs) == 1, evs
    e = evs[0]
    assert e["reason"] == ev.FAILED_MOUNT and e["type"] == ev.WARNING
    assert e["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "web", "namespace": "demo", "uid": "uid-1"}
    assert e["source"] == {"component": "volumemanager", "host": NODE}
    assert e["message"] == ('NodeStageVolume failed for volume "data": not mounted; '
                            "last error from NodeStageVolume: MOUNT_FAILED: wrong fs type")
    assert e["firstTimestamp"] <= e["lastTimestamp"]
    # Far fewer writes than failures: one create, then patches of count/lastTimestamp.
    assert len(fake_apiserver.requests_matching("POST", "/events")) == 1
    assert r.events.writes <= 10
    executor.shutdown()


def test_block_volumes_expansion_and_success(fake_apiserver, kubeconfig, reporters):  # noqa: F811
    _node(fake_apiserver)
    clock = _Clock()
    executor = OperationExecutor(clock=clock)
    inputs = ReporterInputs(
        volumes_in_use=lambda: [], add_completion_callback=executor.add_completion_callback,
        event_targets=lambda o: [EventTarget(POD, "raw", o.key.volume_id == "blk", "op")],
        explain=lambda pod, volume: [])
    _start(kubeconfig, reporters, inputs)
    _fail_n(executor, clock, 1, volume="blk")
    _fail_n(executor, clock, 1, volume="fs", operation="expand_volume")
    executor.run(OperationKey("ok", "uid-1"), "mount_volume", lambda: None)  # a mount that works: no Event
    executor.run(OperationKey("grown", "uid-1"), "expand_volume", lambda: None)
    executor.run(OperationKey("gone", "uid-1"), "unmount_volume", lambda: None)
    assert executor.wait_idle(10)
    wait_until(lambda: len(_events(fake_apiserver)) == 3, what="three Events")
    time.sleep(0.3)
    reasons = sorted((e["reason"], e["type"]) for e in _events(fake_apiserver))
    assert reasons == [(ev.FAILED_MAP_VOLUME, ev.WARNING), (ev.FILE_SYSTEM_RESIZE_SUCCESSFUL, ev.NORMAL),
                       (ev.VOLUME_RESIZE_FAILED, ev.WARNING)]
    failed_map = next(e for e in _events(fake_apiserver) if e["reason"] == ev.FAILED_MAP_VOLUME)
    # Without explain lines the error itself is the cause.
    assert "MOUNT_FAILED: mount(2) of /dev/loop9 failed" in failed_map["message"]
    executor.shutdown()


def test_events_are_rate_limited_per_pod_and_sent_later_not_dropped(fake_apiserver, kubeconfig, reporters):  # noqa: F811
    _node(fake_apiserver)
    clock = _Clock()
    executor = OperationExecutor(clock=clock)
    other = PodRef("uid-2", "demo", "db")
    inputs = ReporterInputs(
        volumes_in_use=lambda: [], add_completion_callback=executor.add_completion_callback,
        event_targets=lambda o: [EventTarget(POD if o.key.pod_uid == "uid-1" else other, o.key.volume_id, False, "op")],
        explain=lambda pod, volume: [])
    r = _start(kubeconfig, reporters, inputs, event_burst=3, event_refill_seconds=1.5)
    for i in range(5):  # five different messages on one pod: the bucket lets three through
        _fail_n(executor, clock, 1, volume=f"v{i}")
    _fail_n(executor, clock, 1, volume="w", pod_uid="uid-2")  # another pod has its own bucket
    wait_until(lambda: len(_events(fake_apiserver)) == 4, what="3 Events of one pod + 1 of the other")
    time.sleep(0.3)
    assert len([e for e in _events(fake_apiserver) if e["involvedObject"]["uid"] == "uid-1"]) == 3
    assert r.events.deferred >= 1 and r.events.pending() == 2
    # Deferred, not dropped: tokens come back (1 per 1.5 s here, 5 min by default).
    wait_until(lambda: len(_events(fake_apiserver)) == 6, timeout=15, what="the deferred Events")
    executor.shutdown()


def test_stable_lines_and_reasons():
    assert stable_lines(["waiting for CSI driver x since 2026-11-28T10:00:00Z (12s ago)", "next retry in 3.0 s",
                         "operation NodeStageVolume in progress", "busy"]) == ["waiting for CSI driver x", "busy"]
    t = EventTarget(POD, "v", False, "L")
    err = FinalError("x")
    assert event_for(OperationOutcome(OperationKey("v"), "attach_volume", err, 0, 0), t)[1] == ev.FAILED_ATTACH_VOLUME
    assert event_for(OperationOutcome(OperationKey("v"), "ControllerPublishVolume", err, 0, 0), t)[1] \
        == ev.FAILED_ATTACH_VOLUME
    assert event_for(OperationOutcome(OperationKey("v"), "detach_volume", err, 0, 0), t) is None
    assert event_for(OperationOutcome(OperationKey("v"), "mount_volume", None, 0, 0), t) is None
    # A plugin that names no operation of its own: the kubelet's names.
    plain = EventTarget(POD, "v", False, "mount_volume")
    assert event_for(OperationOutcome(OperationKey("v"), "mount_volume", err, 0, 0), plain)[2] \
        == 'MountVolume.SetUp failed for volume "v"'
    assert event_for(OperationOutcome(OperationKey("v"), "mount_volume", err, 0, 0),
                     EventTarget(POD, "v", True, ""))[1:] == (ev.FAILED_MAP_VOLUME,
                                                              'MapVolume.MapPodDevice failed for volume "v"')


# --- volumesInUse ----------------------------------------------------------------------------

def test_unique_names_of_attachable_volumes(tmp_path):
    """Each plugin names its attachable volumes (the kubelet's GetVolumeName): CSI volumes with
    a handle; inline ephemeral CSI and hostPath volumes are never attached."""
    from mount_utils.mounter import LinuxMounter
    from volumemanager.manifests.models import CSISource, HostPathSource
    from volumemanager.plugin_host import DaemonPluginHost
    from volumemanager.plugins import build_plugins

    plugins = build_plugins(DaemonPluginHost(str(tmp_path), "node-a", LinuxMounter()))

    def name_of(spec):
        return plugins.find(spec.plugin_name).attachable_volume_name(spec)

    pv = VolumeSpec("pv1", "kubernetes.io/csi", CSISource("loop.csi.x", "h-2", None, {}, False))
    inline = VolumeSpec("eph", "kubernetes.io/csi", CSISource("loop.csi.x", None, None, {}, False))
    hp = VolumeSpec("hp", "kubernetes.io/host-path", HostPathSource("/srv", ""))
    assert name_of(pv) == "kubernetes.io/csi/loop.csi.x^h-2"
    assert name_of(inline) is None and name_of(hp) is None
    pv1 = VolumeSpec("pv0", "kubernetes.io/csi", CSISource("loop.csi.x", "h-1", None, {}, False))
    assert volumes_in_use([pv, None, pv1, pv, hp], name_of) == ["kubernetes.io/csi/loop.csi.x^h-1",
                                                                "kubernetes.io/csi/loop.csi.x^h-2"]


def test_volumes_in_use_is_a_merge_patch_of_that_field_only(fake_apiserver, kubeconfig, reporters):  # noqa: F811
    other_status = {"conditions": [{"type": "Ready", "status": "True"}],
                    "addresses": [{"type": "InternalIP", "address": "10.0.0.5"}],
                    "volumesAttached": [{"name": "kubernetes.io/csi/d^a", "devicePath": ""}]}
    _node(fake_apiserver, status=other_status)
    in_use = {"kubernetes.io/csi/d^b", "kubernetes.io/csi/d^a"}
    ready = threading.Event()
    executor = OperationExecutor()
    inputs = ReporterInputs(volumes_in_use=lambda: set(in_use), in_use_ready=ready.is_set,
                            add_completion_callback=executor.add_completion_callback)
    r = _start(kubeconfig, reporters, inputs)
    time.sleep(0.4)
    # Not before the desired state has been read: an empty list would let the ADC detach.
    assert not fake_apiserver.requests_matching("PATCH", f"/nodes/{NODE}/status")
    ready.set()
    wait_until(lambda: fake_apiserver.get("Node", None, NODE)["status"].get("volumesInUse"), what="volumesInUse")
    status = fake_apiserver.get("Node", None, NODE)["status"]
    assert status["volumesInUse"] == ["kubernetes.io/csi/d^a", "kubernetes.io/csi/d^b"]
    for k, v in other_status.items():
        assert status[k] == v
    (req,) = fake_apiserver.requests_matching("PATCH", f"/nodes/{NODE}/status")
    assert req.content_type == "application/merge-patch+json"
    assert req.body == {"status": {"volumesInUse": ["kubernetes.io/csi/d^a", "kubernetes.io/csi/d^b"]}}
    # A change is sent (an operation's completion wakes the reporter at once); no change, no patch.
    in_use.discard("kubernetes.io/csi/d^a")
    executor.run(OperationKey("x"), "unmount_device", lambda: None)
    wait_until(lambda: fake_apiserver.get("Node", None, NODE)["status"]["volumesInUse"] == ["kubernetes.io/csi/d^b"],
               what="the smaller set")
    time.sleep(0.4)
    assert len(fake_apiserver.requests_matching("PATCH", f"/nodes/{NODE}/status")) == 2
    in_use.clear()
    wait_until(lambda: "volumesInUse" not in fake_apiserver.get("Node", None, NODE)["status"], what="field removed")
    assert fake_apiserver.get("Node", None, NODE)["status"]["conditions"] == other_status["conditions"]
    assert r.in_use.reported == []
    executor.shutdown()


# --- CSINode ---------------------------------------------------------------------------------

def _csinode(fake):
    try:
        return fake.get("CSINode", None, NODE)
    except Exception:  # noqa: BLE001 - NotFound from the fake's store
        return None


def test_csinode_follows_driver_registration(fake_apiserver, kubeconfig, reporters):  # noqa: F811
    node = _node(fake_apiserver, labels={"kubernetes.io/hostname": NODE},
                 annotations={NODE_ID_ANNOTATION: json.dumps({"kubelet.csi.io": "n1-k"})})
    # An entry the kubelet wrote for a driver that registered with it: left alone.
    registry = DriverRegistry()
    registry.add(_driver("a.csi.io", "node-a", [("topology.a.csi.io/zone", "z1")], max_volumes=16))
    inputs = ReporterInputs(volumes_in_use=lambda: [], drivers=registry.list, subscribe_drivers=registry.subscribe)
    fake_apiserver.upsert({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": NODE},
                           "spec": {"drivers": [{"name": "kubelet.csi.io", "nodeID": "n1-k"}]}})
    _start(kubeconfig, reporters, inputs)
    wait_until(lambda: len((_csinode(fake_apiserver) or {}).get("spec", {}).get("drivers", [])) == 2, what="entry a")
    drivers = {d["name"]: d for d in _csinode(fake_apiserver)["spec"]["drivers"]}
    assert drivers["kubelet.csi.io"] == {"name": "kubelet.csi.io", "nodeID": "n1-k"}
    a = drivers["a.csi.io"]
    assert a["nodeID"] == "node-a" and a["allocatable"] == {"count": 16}
    if HAS_TOPOLOGY:
        assert a["topologyKeys"] == ["topology.a.csi.io/zone"]
    meta = fake_apiserver.get("Node", None, NODE)["metadata"]
    assert json.loads(meta["annotations"][NODE_ID_ANNOTATION]) == {"kubelet.csi.io": "n1-k", "a.csi.io": "node-a"}
    if HAS_TOPOLOGY:
        assert meta["labels"]["topology.a.csi.io/zone"] == "z1"
    assert meta["labels"]["kubernetes.io/hostname"] == NODE

    registry.add(_driver("b.csi.io", "node-b"))
    registry.remove("a.csi.io")
    wait_until(lambda: {d["name"] for d in _csinode(fake_apiserver)["spec"]["drivers"]} == {"kubelet.csi.io", "b.csi.io"},
               what="a out, b in")
    b = next(d for d in _csinode(fake_apiserver)["spec"]["drivers"] if d["name"] == "b.csi.io")
    assert b["nodeID"] == "node-b" and "allocatable" not in b
    meta = fake_apiserver.get("Node", None, NODE)["metadata"]
    wait_until(lambda: json.loads(fake_apiserver.get("Node", None, NODE)["metadata"]["annotations"][NODE_ID_ANNOTATION])
               == {"kubelet.csi.io": "n1-k", "b.csi.io": "node-b"}, what="annotation without a")
    if HAS_TOPOLOGY:  # deregistration leaves the labels (as the kubelet does)
        assert meta["labels"]["topology.a.csi.io/zone"] == "z1"
    assert node["metadata"]["uid"]


def test_csinode_is_created_owned_by_the_node_once_the_node_exists(fake_apiserver, kubeconfig, reporters):  # noqa: F811
    registry = DriverRegistry()
    registry.add(_driver("a.csi.io", "node-a", [("topology.a.csi.io/zone", "z1")]))
    inputs = ReporterInputs(volumes_in_use=lambda: [], drivers=registry.list, subscribe_drivers=registry.subscribe)
    r = _start(kubeconfig, reporters, inputs)
    wait_until(lambda: r.health()["csinode"]["state"] == "node-missing", what="node-missing state")
    assert _csinode(fake_apiserver) is None
    node = _node(fake_apiserver)
    wait_until(lambda: _csinode(fake_apiserver), what="CSINode created")
    owner = _csinode(fake_apiserver)["metadata"]["ownerReferences"]
    assert owner == [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node["metadata"]["uid"]}]
    wait_until(lambda: r.health()["csinode"]["state"] == "ok", what="ok again")


@pytest.mark.skipif(not HAS_TOPOLOGY, reason="DriverInfo has no topology field in this tree")
def test_a_topology_label_with_another_value_is_left_alone(fake_apiserver, kubeconfig, reporters):  # noqa: F811
    _node(fake_apiserver, labels={"topology.a.csi.io/zone": "z9"})
    registry = DriverRegistry()
    registry.add(_driver("a.csi.io", "node-a", [("topology.a.csi.io/zone", "z1")]))
    r = _start(kubeconfig, reporters, ReporterInputs(volumes_in_use=lambda: [], drivers=registry.list,
                                                     subscribe_drivers=registry.subscribe))
    wait_until(lambda: _csinode(fake_apiserver), what="CSINode")
    assert fake_apiserver.get("Node", None, NODE)["metadata"]["labels"]["topology.a.csi.io/zone"] == "z9"
    assert [str(c) for c in r.csinode.collisions] == [
        "detected topology value collision: driver a.csi.io reports topology.a.csi.io/zone=z1 but the Node has "
        "topology.a.csi.io/zone=z9; label left unchanged"]


# --- failures --------------------------------------------------------------------------------

def test_forbidden_and_unreachable_are_retried_and_block_nothing(fake_apiserver, kubeconfig, reporters, caplog):  # noqa: F811
    _node(fake_apiserver)
    clock = _Clock()
    executor = OperationExecutor(clock=clock)
    registry = DriverRegistry()
    inputs = ReporterInputs(
        volumes_in_use=lambda: ["kubernetes.io/csi/d^a"], add_completion_callback=executor.add_completion_callback,
        event_targets=lambda o: [EventTarget(POD, "data", False, "op")], explain=lambda pod, volume: [],
        drivers=registry.list, subscribe_drivers=registry.subscribe)
    fake_apiserver.set_auth_failure(403)
    r = _start(kubeconfig, reporters, inputs)
    wait_until(lambda: all(h["state"] == "forbidden" for n, h in r.health().items() if n != "events"),
               what="forbidden")
    # A slow, refusing server: operations and driver registration return at once.
    fake_apiserver.set_delay(1.0)
    t0 = time.monotonic()
    _fail_n(executor, clock, 5)
    registry.add(_driver("a.csi.io", "node-a"))
    assert time.monotonic() - t0 < 0.9  # each request to the server takes 1 s here
    fake_apiserver.set_delay(0)
    n_before = len(fake_apiserver.requests_matching("PATCH", "/status"))
    wait_until(lambda: len(fake_apiserver.requests_matching("PATCH", "/status")) > n_before + 1, what="retries")
    warned = [m for m in caplog.messages if "volumes_in_use" in m and "forbidden" in m]
    assert len(warned) == 1, warned  # logged once per state change, not once per retry

    fake_apiserver.set_auth_failure(None)
    wait_until(lambda: fake_apiserver.get("Node", None, NODE)["status"].get("volumesInUse"), what="healed: in use")
    wait_until(lambda: _csinode(fake_apiserver), what="healed: CSINode")
    wait_until(lambda: _events(fake_apiserver) and _events(fake_apiserver)[0]["count"] == 5, what="healed: 1 Event x5")

    fake_apiserver.stop()
    _fail_n(executor, clock, 1)
    wait_until(lambda: r.health()["events"]["state"] == "unreachable", what="unreachable")
    fake_apiserver.start()
    wait_until(lambda: _events(fake_apiserver)[0]["count"] == 6, timeout=15, what="count 6 after the server is back")
    assert len(_events(fake_apiserver)) == 1
    executor.shutdown()


# --- RBAC ------------------------------------------------------------------------------------

_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _rules():
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    allowed = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                for verb in rule["verbs"]:
                    allowed.add((group, res, verb))
    return docs, allowed


def test_rbac_objects_are_the_service_account_role_and_binding():
    docs, _ = _rules()
    kinds = {d["kind"]: d for d in docs}
    assert kinds["ServiceAccount"]["metadata"] == {"name": "volumemanager", "namespace": "kube-system"}
    binding = kinds["ClusterRoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": kinds["ClusterRole"]["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "volumemanager", "namespace": "kube-system"}]


def test_rbac_allows_what_the_daemon_reads_and_no_more_than_it_needs():
    _, allowed = _rules()
    reads = [("", "pods"), ("", "persistentvolumes"), ("", "persistentvolumeclaims"), ("", "secrets"),
             ("", "configmaps"), ("storage.k8s.io", "storageclasses"), ("storage.k8s.io", "csidrivers"),
             ("storage.k8s.io", "volumeattachments")]
    for group, res in reads:
        for verb in ("get", "list", "watch"):
            assert (group, res, verb) in allowed, (group, res, verb)
    assert ("", "serviceaccounts/token", "create") in allowed
    # Least privilege: nothing deletes, and nothing writes what the daemon only reads.
    assert not [a for a in allowed if a[2] in ("delete", "deletecollection", "*") or "*" in a[:2]]
    assert not [a for a in allowed if a[1] in ("pods", "secrets", "configmaps", "persistentvolumes")
                and a[2] not in ("get", "list", "watch")]


def test_rbac_allows_every_write_the_reporter_makes(fake_apiserver, kubeconfig, reporters):  # noqa: F811
    """Run every write path (Event create+patch, nodes/status, Node metadata, CSINode create and
    update) and check each request of the fake's log against the ClusterRole."""
    _node(fake_apiserver)
    clock = _Clock()
    executor = OperationExecutor(clock=clock)
    registry = DriverRegistry()
    registry.add(_driver("a.csi.io", "node-a"))
    inputs = ReporterInputs(
        volumes_in_use=lambda: ["kubernetes.io/csi/d^a"], add_completion_callback=executor.add_completion_callback,
        event_targets=lambda o: [EventTarget(POD, "data", False, "op")], explain=lambda pod, volume: [],
        drivers=registry.list, subscribe_drivers=registry.subscribe)
    _start(kubeconfig, reporters, inputs)
    _fail_n(executor, clock, 1)
    wait_until(lambda: _events(fake_apiserver) and _csinode(fake_apiserver), what="first writes")
    _fail_n(executor, clock, 1)
    registry.add(_driver("b.csi.io", "node-b"))
    wait_until(lambda: _events(fake_apiserver)[0]["count"] == 2 and len(_csinode(fake_apiserver)["spec"]["drivers"]) == 2,
               what="patch and update")
    seen = _check_log_against_rbac(fake_apiserver)
    assert {("", "events", "create"), ("", "events", "patch"), ("", "nodes", "get"), ("", "nodes", "patch"),
            ("", "nodes/status", "patch"), ("storage.k8s.io", "csinodes", "get"),
            ("storage.k8s.io", "csinodes", "create"), ("storage.k8s.io", "csinodes", "update")} <= seen
    executor.shutdown()


def _check_log_against_rbac(fake) -> set:
    """Every request in the fake's log as (group, resource, verb), each allowed by the ClusterRole.
    A GET with ?watch is "watch", a GET of a collection "list"."""
    _, allowed = _rules()
    seen = set()
    for req in fake.requests:
        segs = [s for s in req.path.split("/") if s]
        group = "" if segs[0] == "api" else segs[1]
        rest = segs[2:] if segs[0] == "api" else segs[3:]
        if rest[:1] == ["namespaces"] and len(rest) > 2:
            rest = rest[2:]
        resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
        verb = _VERBS[req.method]
        if verb == "get" and len(rest) == 1:
            verb = "watch" if req.query.get("watch") in ("1", "true") else "list"
        seen.add((group, resource, verb))
        assert (group, resource, verb) in allowed, f"RBAC does not allow {verb} {group}/{resource}"
    return seen


def test_rbac_allows_every_read_of_the_api_source(fake_apiserver, kubeconfig):  # noqa: F811
    """The API-server source (pods of this node, claims, volumes, classes, drivers, attachments,
    referenced Secrets and ConfigMaps), run against the fake: each request it made is allowed."""
    from volumemanager.sources.apiserver import ApiServerSource

    fake_apiserver.upsert({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s", "namespace": "demo"},
                           "data": {}})
    fake_apiserver.upsert({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "cm", "namespace": "demo"},
                           "data": {"a": "b"}})
    fake_apiserver.upsert({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "namespace": "demo"},
                           "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}],
                                    "volumes": [{"name": "s", "secret": {"secretName": "s"}},
                                                {"name": "c", "configMap": {"name": "cm"}}]},
                           "status": {"phase": "Running"}})
    client = make_client(ApiServerConfig(kubeconfig=str(kubeconfig)), timeout=5.0)
    src = ApiServerSource(client, NODE)
    src.start(lambda: None)
    try:
        wait_until(lambda: ("demo", "s") in (snap := src.snapshot()).secrets and ("demo", "cm") in snap.configmaps,
                   what="the referenced Secret and ConfigMap")
    finally:
        src.stop()
        client.close()
    seen = _check_log_against_rbac(fake_apiserver)
    assert {("", "pods", "list"), ("", "pods", "watch"), ("", "secrets", "watch")} <= seen, seen
