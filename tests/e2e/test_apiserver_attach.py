"""Issue 15, item 4, end to end: attach by the cluster. A CSI PV bound through the API server,
of a driver that requires attach (no CSIDriver object: attachRequired defaults to true), waits
for the VolumeAttachment the kubelet would name (``csi-`` + sha256 of handle, driver, node),
says so in ``explain`` (with the VA's attachError when it has one), and NodeStage runs only
once the VA is attached, with its ``attachmentMetadata`` as publish_context. The daemon never
sends ControllerPublishVolume (or ControllerUnpublishVolume) for it: the test plays the
cluster's external-attacher, calling ControllerPublishVolume on the plugin itself. Nor does it
send CreateVolume for an unbound claim of the API (the external-provisioner's).

The reference plugin (csi_loop ``--controller --attach-required``) really refuses a NodeStage
of a volume that was not published to its node, so a stage before the attach would fail.
"""

from __future__ import annotations

import grpc
import pytest

from tests.daemon_harness import wait_until
from tests.e2e.test_provision import DRIVER, _root, csi_loop, methods, registered  # noqa: F401 - fixtures
from tests.fake_apiserver.conftest import fake_apiserver, kubeconfig  # noqa: F401 - pytest fixtures
from volumemanager._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from volumemanager.csi import client as node_client
from volumemanager.csi.controller_client import CSIControllerClient
from volumemanager.kube.attachments import attachment_name

pytestmark = [pytest.mark.timeout(240)]

NODE = "testnode"  # the harness's --node-name
ATTACH_ARGS = ["--controller", "--capacity", "256Mi", "--attach-required"]
CALLS = ("ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume", "NodeUnpublishVolume",
         "NodeUnstageVolume", "ControllerUnpublishVolume")


def _capability():
    return node_client.volume_capability(False, node_client.access_mode(("ReadWriteOnce",)), "ext4")


def _controller(plugin):
    channel = grpc.insecure_channel(f"unix://{plugin.endpoint.removeprefix('unix://')}")
    return channel, csi_pb2_grpc.ControllerStub(channel)


def _publish(plugin, handle: str) -> dict[str, str]:
    """The external-attacher's ControllerPublishVolume (the test is the cluster here)."""
    channel, stub = _controller(plugin)
    with channel:
        resp = stub.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=handle, node_id=plugin.node_id, volume_capability=_capability(), readonly=False), timeout=20)
    return dict(resp.publish_context)


def _unpublish(plugin, handle: str) -> None:
    channel, stub = _controller(plugin)
    with channel:
        stub.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=handle, node_id=plugin.node_id), timeout=20)


def _api_objects(fake, handle: str) -> None:
    fake.upsert({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "api-pv"},
                 "spec": {"capacity": {"storage": "16Mi"}, "accessModes": ["ReadWriteOnce"],
                          "persistentVolumeReclaimPolicy": "Retain",
                          "claimRef": {"namespace": "demo", "name": "data"},
                          "csi": {"driver": DRIVER, "volumeHandle": handle, "fsType": "ext4"}},
                 "status": {"phase": "Bound"}})
    fake.upsert({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "demo"},
                 "spec": {"volumeName": "api-pv", "accessModes": ["ReadWriteOnce"],
                          "resources": {"requests": {"storage": "16Mi"}}},
                 "status": {"phase": "Bound"}})
    fake.upsert({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": "demo"},
                 "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}],
                          "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": "data"}}]},
                 "status": {"phase": "Running"}})


def _va(name: str, status: dict) -> dict:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment", "metadata": {"name": name},
            "spec": {"attacher": DRIVER, "nodeName": NODE, "source": {"persistentVolumeName": "api-pv"}},
            "status": status}


def test_volume_attachment_gates_node_stage_and_brings_publish_context(
        daemon_factory, csi_loop, fake_apiserver, kubeconfig):  # noqa: F811
    d = daemon_factory(["--kubeconfig", str(kubeconfig), "--csi-timeout", "20"])
    plugin = csi_loop(extra_args=ATTACH_ARGS)
    registered(d)
    with CSIControllerClient(plugin.endpoint) as c:
        handle = c.create_volume("api-one", [_capability()], 16 << 20).volume_id
    va_name = attachment_name(handle, DRIVER, NODE)
    # An unbound claim of the API with a class of this driver: the cluster's provisioner's, not ours.
    fake_apiserver.upsert({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "loop"},
                           "provisioner": DRIVER, "volumeBindingMode": "Immediate"})
    fake_apiserver.upsert({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "metadata": {"name": "pending", "namespace": "demo"},
                           "spec": {"storageClassName": "loop", "accessModes": ["ReadWriteOnce"],
                                    "resources": {"requests": {"storage": "16Mi"}}}})
    _api_objects(fake_apiserver, handle)

    def explain() -> str:
        return d.cli("explain", "demo/app", check=False).stdout

    out = wait_until(lambda: (o := explain()) and f"waiting for VolumeAttachment {va_name}" in o and o, 30, 0.2,
                     what="explain to name the VolumeAttachment")
    print(out)
    assert methods(plugin, CALLS) == []  # neither ControllerPublish from the daemon nor a NodeStage

    # The attacher failed once: its attachError shows in explain, still no stage.
    fake_apiserver.upsert(_va(va_name, {"attached": False,
                                        "attachError": {"message": "rpc error: no free attach slot",
                                                        "time": "2026-11-28T11:00:00Z"}}))
    wait_until(lambda: "no free attach slot" in explain(), 20, 0.2, what="the attachError in explain")
    assert methods(plugin, CALLS) == []

    # The cluster attaches: ControllerPublish (by the test), then the VA says attached. The VA's
    # change wakes the waiting volume; NodeStage gets the metadata as publish_context.
    context = _publish(plugin, handle)
    assert context.get("devicePath", "").startswith("/dev/loop")
    fake_apiserver.upsert(_va(va_name, {"attached": True, "attachmentMetadata": context}))
    res = d.cli("wait", "demo/app", "--timeout", "60", check=False)
    assert res.returncode == 0, explain()
    assert methods(plugin, CALLS) == ["ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume"]
    assert len(plugin.calls("ControllerPublishVolume")) == 1  # the test's own
    assert plugin.calls("NodeStageVolume")[0]["publish_context"] == context
    assert plugin.calls("NodePublishVolume")[0]["publish_context"] == context
    assert "VolumeAttachment" not in explain().replace(va_name, "")  # mounted: nothing waits
    # The one-host attach controller (issue 14) keeps no attachment of its own for it.
    assert d.status().get("attachments", []) == []
    # Provisioning belongs to the cluster too: the API's unbound claim got no CreateVolume.
    assert len(plugin.calls("CreateVolume")) == 1  # the test's own
    assert "demo/pending" not in {c["claim"] for c in d.status().get("claims", [])}

    # The pod goes: unpublish and unstage on the node, never ControllerUnpublish (the cluster's).
    fake_apiserver.delete("Pod", "demo", "app")
    wait_until(lambda: plugin.calls("NodeUnstageVolume"), 40, what="NodeUnstageVolume")
    wait_until(lambda: not d.mounts(), 15, what="nothing mounted")
    assert plugin.calls("ControllerUnpublishVolume") == []
    _unpublish(plugin, handle)
    with CSIControllerClient(plugin.endpoint) as c:
        c.delete_volume(handle)


def test_csidriver_attach_required_false_needs_no_volume_attachment(
        daemon_factory, csi_loop, fake_apiserver, kubeconfig):  # noqa: F811
    """attachRequired: false on the API's CSIDriver: no VA is waited for, and none is asked
    of the plugin either (this plugin then refuses NodeStage: the rule was followed)."""
    d = daemon_factory(["--kubeconfig", str(kubeconfig), "--csi-timeout", "20"])
    plugin = csi_loop(extra_args=ATTACH_ARGS)
    registered(d)
    fake_apiserver.upsert({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": DRIVER},
                           "spec": {"attachRequired": False}})
    with CSIControllerClient(plugin.endpoint) as c:
        handle = c.create_volume("api-two", [_capability()], 16 << 20).volume_id
    _api_objects(fake_apiserver, handle)
    wait_until(lambda: plugin.calls("NodeStageVolume"), 40, what="NodeStage without a VolumeAttachment")
    assert plugin.calls("ControllerPublishVolume") == []
    assert "publish_context" not in plugin.calls("NodeStageVolume")[0]
    assert "VolumeAttachment" not in d.cli("explain", "demo/app", check=False).stdout
    fake_apiserver.delete("Pod", "demo", "app")
    wait_until(lambda: not d.mounts(), 30, what="nothing mounted")
    with CSIControllerClient(plugin.endpoint) as c:
        c.delete_volume(handle)
