"""Issue 14 (provisioning, deletion, claims): the daemon plays external-provisioner and the PV
binder on one host. The reference plugin runs as a separate process in Controller mode and is
discovered through plugins_registry/; the order of its calls is read off its call log."""

from __future__ import annotations

import json
import os

import pytest

from tests.csi_loop.harness import plugin_factory
from tests.daemon_harness import pods_on_claim, wait_until
from tests.fixtures_mounts import require_root, require_tools

pytestmark = [pytest.mark.timeout(240)]

DRIVER = "csi-loop.test"
CONTROLLER_ARGS = ["--controller", "--capacity", "256Mi"]


def storage_class(name: str = "loop", reclaim: str = "Delete", binding: str = "Immediate") -> str:
    return f"""\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: {name}}}
provisioner: {DRIVER}
parameters:
  csi.storage.k8s.io/fstype: ext4
reclaimPolicy: {reclaim}
volumeBindingMode: {binding}
"""


def claim(name: str = "data", size: str = "32Mi", sc: str = "loop", uid: str = "c0ffee00-0000-4000-8000-000000000001") -> str:
    return f"""\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}, namespace: demo, uid: "{uid}"}}
spec:
  storageClassName: {sc}
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: {size}}}}}
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


def methods(plugin, wanted: tuple[str, ...]) -> list[str]:
    return [c["method"] for c in plugin.calls() if c["method"] in wanted]


def controller_volumes(plugin) -> dict:
    try:
        state = json.loads((plugin.state_dir / "state.json").read_text())
    except FileNotFoundError:
        return {}
    return state.get("controller_volumes", {})


def claims(d) -> dict[str, dict]:
    return {c["claim"]: c for c in d.status()["claims"]}


def registered(d) -> None:
    wait_until(lambda: any(x["name"] == DRIVER and x["controller_capabilities"] for x in d.status()["drivers"]),
               15, what="driver registration with its Controller service")


NODE_AND_CONTROLLER = ("CreateVolume", "NodeStageVolume", "NodePublishVolume", "NodeUnpublishVolume",
                       "NodeUnstageVolume", "DeleteVolume")


def test_immediate_provision_then_data_survives_pods_then_delete_in_order(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    drv = [x for x in d.status()["drivers"] if x["name"] == DRIVER][0]
    assert "CREATE_DELETE_VOLUME" in drv["controller_capabilities"]
    assert drv["controller_endpoint"] == plugin.endpoint

    # Immediate: the claim alone gets a volume, before any pod.
    d.write_manifest("sc.yaml", docs(storage_class(), claim()))
    wait_until(lambda: claims(d).get("demo/data", {}).get("phase") == "Bound", 30, what="claim Bound")
    c = claims(d)["demo/data"]
    assert c["pv"] == "pvc-c0ffee00-0000-4000-8000-000000000001"
    assert c["volume_handle"] and c["storage_class"] == "loop" and c["requested_bytes"] == 32 << 20
    assert c["capacity_bytes"] >= 32 << 20 and c["last_error"] is None
    record = d.root / "state" / "provisioned" / f"{c['pv']}.json"
    pv = json.loads(record.read_text())
    assert pv["kind"] == "PersistentVolume" and pv["spec"]["csi"]["volumeHandle"] == c["volume_handle"]
    assert pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == DRIVER
    assert pv["spec"]["claimRef"]["name"] == "data" and pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    # The driver has VOLUME_ACCESSIBILITY_CONSTRAINTS: this node's segment (NodeGetInfo) was the
    # requisite topology, and the volume's accessible topology became the PV's node affinity.
    term = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert term == {"key": "topology.csi-loop.test/node", "operator": "In", "values": ["node1"]}
    create = plugin.calls("CreateVolume")
    assert len(create) == 1

    d.write_manifest("pod.yaml", docs(*pods_on_claim("data", ("app",))))
    assert d.cli("wait", "demo/app", "--timeout", "40").returncode == 0
    assert methods(plugin, NODE_AND_CONTROLLER) == ["CreateVolume", "NodeStageVolume", "NodePublishVolume"]
    row = [v for v in d.status()["volumes"] if v["pod"] == "demo/app"][0]
    with open(os.path.join(row["mount_path"], "kept.txt"), "w") as f:
        f.write("survives")

    # The pod goes, a new pod comes: same volume, same data, no second CreateVolume.
    (d.manifests / "pod.yaml").unlink()
    wait_until(lambda: len(plugin.calls("NodeUnstageVolume")) == 1, 30, what="the first pod's tear-down")
    d.write_manifest("pod.yaml", docs(*pods_on_claim("data", ("app2",))))
    assert d.cli("wait", "demo/app2", "--timeout", "40").returncode == 0
    row = [v for v in d.status()["volumes"] if v["pod"] == "demo/app2"][0]
    with open(os.path.join(row["mount_path"], "kept.txt")) as f:
        assert f.read() == "survives"
    assert len(plugin.calls("CreateVolume")) == 1

    # Claim and pod removed: unpublish, unstage, then DeleteVolume, and the record goes.
    (d.manifests / "pod.yaml").unlink()
    d.write_manifest("sc.yaml", storage_class())
    wait_until(lambda: plugin.calls("DeleteVolume"), 40, what="DeleteVolume")
    wait_until(lambda: not record.exists(), 10, what="the record removed")
    tail = methods(plugin, NODE_AND_CONTROLLER)[-3:]
    assert tail == ["NodeUnpublishVolume", "NodeUnstageVolume", "DeleteVolume"]
    assert controller_volumes(plugin) == {}
    assert d.status()["claims"] == []
    wait_until(lambda: not d.mounts(), 15, what="nothing mounted")


def test_wait_for_first_consumer_provisions_only_when_a_pod_arrives(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    d.write_manifest("sc.yaml", docs(storage_class(binding="WaitForFirstConsumer"), claim()))
    wait_until(lambda: claims(d).get("demo/data", {}).get("waiting_for"), 15, what="the claim waiting")
    c = claims(d)["demo/data"]
    assert c["phase"] == "Pending" and "first consumer" in c["waiting_for"]
    assert plugin.calls("CreateVolume") == []
    d.write_manifest("pod.yaml", docs(*pods_on_claim("data", ("app",))))
    out = d.cli("explain", "demo/app", check=False).stdout
    assert d.cli("wait", "demo/app", "--timeout", "40").returncode == 0, out
    assert methods(plugin, NODE_AND_CONTROLLER) == ["CreateVolume", "NodeStageVolume", "NodePublishVolume"]
    assert claims(d)["demo/data"]["phase"] == "Bound"


def test_retain_keeps_the_volume_and_shows_released(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    d.write_manifest("sc.yaml", docs(storage_class(reclaim="Retain"), claim(), *pods_on_claim("data", ("app",))))
    assert d.cli("wait", "demo/app", "--timeout", "40").returncode == 0
    d.write_manifest("sc.yaml", storage_class(reclaim="Retain"))
    wait_until(lambda: len(plugin.calls("NodeUnstageVolume")) == 1, 30, what="the tear-down")
    wait_until(lambda: [c["phase"] for c in d.status()["claims"]] == ["Released"], 15, what="Released")
    c = d.status()["claims"][0]
    assert c["claim"] == "demo/data" and c["reclaim_policy"] == "Retain" and c["volume_handle"]
    table = d.cli("status").stdout
    assert "demo/data: Released pvc-c0ffee00-0000-4000-8000-000000000001" in table, table
    assert "; controller (" in table and "CREATE_DELETE_VOLUME" in table, table
    assert plugin.calls("DeleteVolume") == []
    assert len(controller_volumes(plugin)) == 1
    wait_until(lambda: not d.mounts(), 15, what="nothing mounted")


def test_resource_exhausted_shows_code_and_next_retry_in_explain(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=["--controller", "--capacity", "16Mi"])
    registered(d)
    d.write_manifest("sc.yaml", docs(storage_class(), claim(size="64Mi"), *pods_on_claim("data", ("app",))))
    wait_until(lambda: (claims(d).get("demo/data") or {}).get("last_error"), 20, what="the CreateVolume error")
    c = claims(d)["demo/data"]
    assert c["phase"] == "Pending" and c["last_error"]["code"] == "RESOURCE_EXHAUSTED"
    assert c["last_error"]["operation"] == "CreateVolume"
    out = d.cli("explain", "demo/app", check=False)
    assert out.returncode == 1
    print(out.stdout)
    assert "claim demo/data is Pending" in out.stdout
    assert "CreateVolume failed with RESOURCE_EXHAUSTED" in out.stdout
    assert "next retry in" in out.stdout
    plan = json.loads(d.cli("plan", "--json").stdout)
    assert any(a["action"] == "provision" and a["volume"] == "demo/data" for a in plan)
    assert plugin.calls("NodeStageVolume") == []
    assert len(plugin.calls("CreateVolume")) >= 1


def test_sigkill_during_create_volume_then_restart_makes_exactly_one_volume(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    plugin.set_fault("CreateVolume", sleep=3, count=1)
    d.write_manifest("sc.yaml", docs(storage_class(), claim(), *pods_on_claim("data", ("app",))))
    wait_until(lambda: plugin.calls("CreateVolume"), 15, what="CreateVolume sent")
    d.kill()  # SIGKILL
    wait_until(lambda: len(controller_volumes(plugin)) == 1, 15, what="the driver finishing the slow CreateVolume")
    d.start()
    assert d.cli("wait", "demo/app", "--timeout", "60").returncode == 0
    assert len(controller_volumes(plugin)) == 1, "exactly one volume after the crash"
    names = {c.get("name") for c in plugin.calls("CreateVolume")}
    assert names == {"pvc-c0ffee00-0000-4000-8000-000000000001"}, "a retry sends the same name"
    assert any(i["step"] == "CreateVolume" for i in d.status()["interrupted_at_start"])


def test_sigkill_during_delete_volume_then_restart_deletes_once(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    d.write_manifest("sc.yaml", docs(storage_class(), claim(), *pods_on_claim("data", ("app",))))
    assert d.cli("wait", "demo/app", "--timeout", "40").returncode == 0
    plugin.set_fault("DeleteVolume", sleep=3, count=1)
    d.write_manifest("sc.yaml", storage_class())
    wait_until(lambda: plugin.calls("DeleteVolume"), 30, what="DeleteVolume sent")
    d.kill()  # SIGKILL
    d.start()
    wait_until(lambda: d.status()["claims"] == [], 30, what="the record gone after the restart")
    assert controller_volumes(plugin) == {}
    tail = methods(plugin, NODE_AND_CONTROLLER)
    assert tail.index("NodeUnstageVolume") < tail.index("DeleteVolume")
    wait_until(lambda: not d.mounts(), 15, what="nothing mounted")


def test_uncertain_create_volume_of_a_removed_claim_is_finished_then_deleted(daemon_factory, csi_loop):
    """The sidecar's "in background" rule: a CreateVolume that timed out may have made the
    volume; removing the claim meanwhile must not leak it."""
    d = daemon_factory(extra_args=["--csi-timeout", "1.5"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    plugin.set_fault("CreateVolume", sleep=3, count=1)
    d.write_manifest("sc.yaml", docs(storage_class(), claim()))
    wait_until(lambda: plugin.calls("CreateVolume"), 15, what="CreateVolume sent")
    d.write_manifest("sc.yaml", storage_class())  # the claim goes while the call hangs
    wait_until(lambda: plugin.calls("DeleteVolume"), 30, what="DeleteVolume of the volume made in background")
    wait_until(lambda: controller_volumes(plugin) == {}, 15, what="no volume left in the driver")
    wait_until(lambda: d.status()["claims"] == [], 15, what="no claim or record left")
    assert not (d.root / "state" / "provisioned" / "pvc-c0ffee00-0000-4000-8000-000000000001.json").exists()


def test_sigkill_during_create_volume_then_claim_removed_before_restart_deletes_the_volume(daemon_factory, csi_loop):
    """The intent journal keeps the request: after a restart the interrupted CreateVolume is
    sent again even though its claim is gone, and the volume it made is deleted, not leaked."""
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    plugin.set_fault("CreateVolume", sleep=3, count=1)
    d.write_manifest("sc.yaml", docs(storage_class(), claim()))
    wait_until(lambda: plugin.calls("CreateVolume"), 15, what="CreateVolume sent")
    d.kill()  # SIGKILL
    d.write_manifest("sc.yaml", storage_class())
    wait_until(lambda: len(controller_volumes(plugin)) == 1, 15, what="the driver finishing the slow CreateVolume")
    d.start()
    wait_until(lambda: plugin.calls("DeleteVolume"), 30, what="DeleteVolume of the volume made before the crash")
    wait_until(lambda: controller_volumes(plugin) == {}, 15, what="no volume left in the driver")
    assert {c.get("name") for c in plugin.calls("CreateVolume")} == {"pvc-c0ffee00-0000-4000-8000-000000000001"}
    wait_until(lambda: d.status()["claims"] == [], 15, what="no record left")


def test_claim_removed_while_node_stage_is_in_flight_deletes_only_after_unstage(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    plugin.set_fault("NodeStageVolume", sleep=3, count=1)
    d.write_manifest("sc.yaml", docs(storage_class(), claim(), *pods_on_claim("data", ("app",))))
    wait_until(lambda: plugin.calls("NodeStageVolume"), 20, what="NodeStage in flight")
    d.write_manifest("sc.yaml", storage_class())  # claim and pod gone while the stage runs
    wait_until(lambda: plugin.calls("DeleteVolume"), 40, what="DeleteVolume")
    order = methods(plugin, NODE_AND_CONTROLLER)
    assert order.index("NodeUnstageVolume") < order.index("DeleteVolume"), order
    wait_until(lambda: controller_volumes(plugin) == {}, 15, what="the volume deleted")
    wait_until(lambda: not d.mounts(), 15, what="nothing mounted")


def test_explain_names_a_missing_driver_and_a_refused_parameter(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    absent = storage_class().replace(f"provisioner: {DRIVER}", "provisioner: csi.absent.example")
    d.write_manifest("sc.yaml", docs(absent, claim(), *pods_on_claim("data", ("app",))))
    wait_until(lambda: (claims(d).get("demo/data") or {}).get("waiting_for"), 15, what="the claim waiting")
    out = d.cli("explain", "demo/app", check=False).stdout
    assert "claim demo/data is Pending" in out and "waiting for CSI driver csi.absent.example to register" in out, out

    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    bad = storage_class().replace("  csi.storage.k8s.io/fstype: ext4", "  csi.storage.k8s.io/fstype: ext4\n"
                                  "  csi.storage.k8s.io/bogus: x")
    d.write_manifest("sc.yaml", docs(bad, claim(), *pods_on_claim("data", ("app",))))
    wait_until(lambda: (claims(d).get("demo/data") or {}).get("last_error"), 15, what="the refused class")
    out = d.cli("explain", "demo/app", check=False).stdout
    assert "CreateVolume failed with INVALID_PARAMETER" in out and "reserved namespace" in out, out
    assert plugin.calls("CreateVolume") == [], "a refused request never reaches the driver"
