"""The real daemon with --kubeconfig against the fake API server: a CSI driver that registers
with it (csi-loop through its registration socket) shows up in this node's CSINode and in the
Node's nodeid annotation and topology labels; when the driver goes, its entry goes.

This checks the hook in the daemon (VolumeManager.start -> kube.wiring.start_for); the
reporter's rules are tested in test_reporter.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.csi_loop.harness import plugin_factory
from tests.daemon_harness import daemon_factory, wait_until  # noqa: F401 - pytest fixture
from tests.fake_apiserver.conftest import fake_apiserver, kubeconfig  # noqa: F401 - pytest fixtures
from tests.fixtures_mounts import require_root

NODE = "testnode"  # the harness's --node-name
DRIVER = "report.csi.test"


def _daemon_has_kubeconfig() -> bool:
    r = subprocess.run([sys.executable, "-m", "volumemanager", "daemon", "--help"], capture_output=True, text=True,
                       timeout=60)
    return "--kubeconfig" in r.stdout


def _csinode_drivers(fake) -> dict:
    try:
        obj = fake.get("CSINode", None, NODE)
    except Exception:  # noqa: BLE001 - not there yet
        return {}
    return {d["name"]: d for d in (obj.get("spec") or {}).get("drivers") or []}


@pytest.mark.timeout(120)
def test_driver_registration_reaches_csinode_and_the_node(tmp_path, daemon_factory, fake_apiserver, kubeconfig):  # noqa: F811
    require_root()
    if not _daemon_has_kubeconfig():
        pytest.skip("the daemon has no --kubeconfig flag in this tree")
    fake_apiserver.upsert({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    d = daemon_factory(["--kubeconfig", str(kubeconfig)])
    with plugin_factory(tmp_path / "csi", d.registry) as make:
        plugin = make(name=DRIVER, node_id="loop-node-7",
                      extra_args=["--topology-key", "topology.report.csi.test/zone", "--topology-value", "z1"])
        wait_until(lambda: DRIVER in _csinode_drivers(fake_apiserver), timeout=30,
                   what=f"the CSINode entry of {DRIVER} (log: {d.log(3000)})")
        entry = _csinode_drivers(fake_apiserver)[DRIVER]
        assert entry["nodeID"] == "loop-node-7"
        meta = fake_apiserver.get("Node", None, NODE)["metadata"]
        assert json.loads(meta["annotations"]["csi.volume.kubernetes.io/nodeid"]) == {DRIVER: "loop-node-7"}
        if entry.get("topologyKeys"):  # the registry carries NodeGetInfo's topology in this tree
            assert entry["topologyKeys"] == ["topology.report.csi.test/zone"]
            assert meta["labels"]["topology.report.csi.test/zone"] == "z1"
        owner = fake_apiserver.get("CSINode", None, NODE)["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("Node", NODE)
        plugin.stop()
        wait_until(lambda: DRIVER not in _csinode_drivers(fake_apiserver), timeout=30,
                   what="the entry removed after the driver went")
        wait_until(lambda: "csi.volume.kubernetes.io/nodeid" not in
                   (fake_apiserver.get("Node", None, NODE)["metadata"].get("annotations") or {}), what="annotation gone")
    assert d.stop() == 0


@pytest.mark.timeout(120)
def test_a_failing_mount_of_an_api_pod_is_one_counted_event(tmp_path, daemon_factory, fake_apiserver, kubeconfig):  # noqa: F811
    require_root()
    if not _daemon_has_kubeconfig():
        pytest.skip("the daemon has no --kubeconfig flag in this tree")
    fake_apiserver.upsert({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    missing = tmp_path / "not-there"
    fake_apiserver.upsert({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default", "uid": "uid-web"},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}],
                 "volumes": [{"name": "data", "hostPath": {"path": str(missing), "type": "Directory"}}]}})
    d = daemon_factory(["--kubeconfig", str(kubeconfig)])

    def events():
        return [e for e in fake_apiserver.list("Event", "default") if e["involvedObject"].get("name") == "web"]

    wait_until(lambda: events() and events()[0].get("count", 0) >= 2, timeout=60,
               what=f"a FailedMount Event counted twice (log: {d.log(3000)})")
    (e,) = events()
    assert e["reason"] == "FailedMount" and e["type"] == "Warning"
    assert e["involvedObject"]["uid"] == fake_apiserver.get("Pod", "default", "web")["metadata"]["uid"]
    assert e["source"]["host"] == NODE
    assert 'failed for volume "data"' in e["message"] and str(missing) in e["message"], e["message"]
    assert e["message"].startswith('MountVolume.SetUp failed for volume "data": '), e["message"]
    assert d.stop() == 0
