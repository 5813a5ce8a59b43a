"""Issue 14 attach: ControllerPublishVolume before the first NodeStage (its publish_context passed
to NodeStage and NodePublish), ControllerUnpublishVolume after the last NodeUnstage, for a driver
with PUBLISH_UNPUBLISH_VOLUME. The reference plugin runs as a separate process in Controller mode
with ``--attach-required`` (its NodeStage refuses a volume that was not published to this node
or comes without the right ``devicePath``); the order of its calls is read off its call log."""

from __future__ import annotations

import json

import pytest

from tests.daemon_harness import pods_on_claim, wait_until
from tests.e2e.test_provision import (  # noqa: F401 - fixtures and helpers of the provisioning tests
    DRIVER,
    _root,
    claim,
    claims,
    controller_volumes,
    csi_loop,
    docs,
    methods,
    registered,
    storage_class,
)

pytestmark = [pytest.mark.timeout(240)]

ATTACH_ARGS = ["--controller", "--capacity", "256Mi", "--attach-required"]
PV_NAME = "pvc-c0ffee00-0000-4000-8000-000000000001"
ORDER = ("CreateVolume", "ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume", "NodeUnpublishVolume",
         "NodeUnstageVolume", "ControllerUnpublishVolume", "DeleteVolume")


def attachments(d) -> dict[str, dict]:
    return {a["volume"]: a for a in d.status()["attachments"]}


def attached_nodes(plugin) -> dict:
    return {vid: v.get("attached", {}) for vid, v in controller_volumes(plugin).items() if v.get("attached")}


def csi_driver_object(attach_required: bool) -> str:
    return f"""\
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {{name: {DRIVER}}}
spec: {{attachRequired: {str(attach_required).lower()}}}
"""


def test_attach_before_stage_and_detach_after_unstage_then_delete(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=ATTACH_ARGS)
    registered(d)
    drv = [x for x in d.status()["drivers"] if x["name"] == DRIVER][0]
    assert "PUBLISH_UNPUBLISH_VOLUME" in drv["controller_capabilities"]

    d.write_manifest("sc.yaml", docs(storage_class(), claim(), *pods_on_claim("data", ("app",))))
    assert d.cli("wait", "demo/app", "--timeout", "60").returncode == 0, d.cli("explain", "demo/app", check=False).stdout
    assert methods(plugin, ORDER) == ["CreateVolume", "ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume"]
    publish = plugin.calls("ControllerPublishVolume")[0]
    handle = claims(d)["demo/data"]["volume_handle"]
    assert publish["volume_id"] == handle
    # The device the controller attached reaches the node in publish_context.
    att = attachments(d)[PV_NAME]
    assert att["state"] == "attached" and att["driver"] == DRIVER and att["volume_handle"] == handle
    device = att["publish_context"]["devicePath"]
    assert device.startswith("/dev/loop")
    assert plugin.calls("NodeStageVolume")[0]["publish_context"] == {"devicePath": device}
    assert plugin.calls("NodePublishVolume")[0]["publish_context"] == {"devicePath": device}
    record = d.root / "state" / "attachments" / f"{PV_NAME}.json"
    assert json.loads(record.read_text())["state"] == "attached"
    assert list(attached_nodes(plugin)) == [handle]
    row = [v for v in d.status()["volumes"] if v["pod"] == "demo/app"][0]
    with open(f"{row['mount_path']}/kept.txt", "w") as f:
        f.write("attached")

    # A second pod on the same volume: no second attach.
    d.write_manifest("pod2.yaml", docs(*pods_on_claim("data", ("app2",))))
    assert d.cli("wait", "demo/app2", "--timeout", "40").returncode == 0
    assert len(plugin.calls("ControllerPublishVolume")) == 1
    (d.manifests / "pod2.yaml").unlink()

    # Claim and pods removed: unpublish, unstage, ControllerUnpublish, then DeleteVolume.
    d.write_manifest("sc.yaml", storage_class())
    wait_until(lambda: plugin.calls("DeleteVolume"), 40, what="DeleteVolume")
    order = methods(plugin, ORDER)
    assert order[-4:] == ["NodeUnpublishVolume", "NodeUnstageVolume", "ControllerUnpublishVolume", "DeleteVolume"], order
    assert len(plugin.calls("ControllerUnpublishVolume")) == 1
    wait_until(lambda: controller_volumes(plugin) == {}, 15, what="the volume deleted")
    wait_until(lambda: d.status()["attachments"] == [], 10, what="no attachment left")
    assert not record.exists()
    wait_until(lambda: not d.mounts(), 15, what="nothing mounted")


def test_static_pv_of_an_attach_required_driver_is_published_too(daemon_factory, csi_loop):
    from volumemanager.csi import client as node_client
    from volumemanager.csi.controller_client import CSIControllerClient

    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=ATTACH_ARGS)
    registered(d)
    cap = node_client.volume_capability(False, node_client.access_mode(("ReadWriteOnce",)), "ext4")
    with CSIControllerClient(plugin.endpoint) as c:
        handle = c.create_volume("static-one", [cap], 16 << 20).volume_id
    pv = f"""\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: static-pv}}
spec:
  capacity: {{storage: 16Mi}}
  accessModes: [ReadWriteOnce]
  csi: {{driver: {DRIVER}, volumeHandle: "{handle}", fsType: ext4}}
"""
    pvc = """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: static, namespace: demo}
spec: {volumeName: static-pv, accessModes: [ReadWriteOnce], resources: {requests: {storage: 16Mi}}}
"""
    d.write_manifest("static.yaml", docs(pv, pvc))
    d.write_manifest("pod.yaml", docs(*pods_on_claim("static", ("app",))))
    assert d.cli("wait", "demo/app", "--timeout", "60").returncode == 0, d.cli("explain", "demo/app", check=False).stdout
    assert methods(plugin, ORDER)[-3:] == ["ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume"]
    assert attachments(d)["static-pv"]["state"] == "attached"

    (d.manifests / "pod.yaml").unlink()  # the PV stays in the manifests: detached, never deleted
    wait_until(lambda: plugin.calls("ControllerUnpublishVolume"), 40, what="ControllerUnpublishVolume")
    order = methods(plugin, ORDER)
    assert order[-3:] == ["NodeUnpublishVolume", "NodeUnstageVolume", "ControllerUnpublishVolume"], order
    wait_until(lambda: d.status()["attachments"] == [], 10, what="no attachment left")
    assert plugin.calls("DeleteVolume") == [] and attached_nodes(plugin) == {}
    with CSIControllerClient(plugin.endpoint) as c:
        c.delete_volume(handle)


def test_csidriver_attach_required_false_sends_no_controller_publish(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=ATTACH_ARGS)
    registered(d)
    d.write_manifest("sc.yaml", docs(csi_driver_object(False), storage_class(), claim(),
                                     *pods_on_claim("data", ("app",))))
    # This plugin does need the attach: its NodeStage refuses, which shows the rule was followed.
    wait_until(lambda: plugin.calls("NodeStageVolume"), 40, what="NodeStage without an attach")
    assert plugin.calls("ControllerPublishVolume") == []
    assert "publish_context" not in plugin.calls("NodeStageVolume")[0]
    assert d.status()["attachments"] == []
    out = d.cli("explain", "demo/app", check=False).stdout
    assert "FAILED_PRECONDITION" in out, out
    assert "ControllerPublishVolume" not in out.replace("was ControllerPublishVolume called?", "")

    # The CSIDriver object goes: the default (attachRequired true) attaches and the pod mounts.
    d.write_manifest("sc.yaml", docs(storage_class(), claim(), *pods_on_claim("data", ("app",))))
    assert d.cli("wait", "demo/app", "--timeout", "60").returncode == 0, d.cli("explain", "demo/app", check=False).stdout
    assert len(plugin.calls("ControllerPublishVolume")) == 1
    d.write_manifest("sc.yaml", storage_class())
    wait_until(lambda: controller_volumes(plugin) == {}, 40, what="the volume detached and deleted")


def test_controller_publish_failure_shows_in_explain_and_plan_then_recovers(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=ATTACH_ARGS)
    registered(d)
    plugin.set_fault("ControllerPublishVolume", code="RESOURCE_EXHAUSTED", message="no free attach slot")
    d.write_manifest("sc.yaml", docs(storage_class(), claim(), *pods_on_claim("data", ("app",))))

    def explained() -> str:
        out = d.cli("explain", "demo/app", check=False).stdout
        return out if "ControllerPublishVolume failed with RESOURCE_EXHAUSTED" in out else ""

    out = wait_until(explained, 30, 0.5, what="the ControllerPublishVolume error in explain")
    print(out)
    assert f"waiting for ControllerPublishVolume of {PV_NAME}" in out
    assert "no free attach slot" in out
    assert plugin.calls("NodeStageVolume") == []
    # The failed first attempt left no attachment: the driver answered, nothing is attached.
    plan = json.loads(d.cli("plan", "--json").stdout)
    assert any(a["action"] == "attach" and a["volume_id"] == PV_NAME for a in plan), plan
    assert d.status()["attachments"] == []
    # Retried with backoff, not in a tight loop.
    tries = len(plugin.calls("ControllerPublishVolume"))
    assert tries <= 4, tries
    plugin.clear_faults()
    assert d.cli("wait", "demo/app", "--timeout", "90").returncode == 0
    assert methods(plugin, ORDER)[-2:] == ["NodeStageVolume", "NodePublishVolume"]
    d.write_manifest("sc.yaml", storage_class())
    wait_until(lambda: controller_volumes(plugin) == {}, 40, what="the volume detached and deleted")


def test_sigkill_during_controller_publish_then_restart_attaches_once_and_detaches_once(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=ATTACH_ARGS)
    registered(d)
    plugin.set_fault("ControllerPublishVolume", sleep=3, count=1)
    d.write_manifest("sc.yaml", docs(storage_class(), claim(), *pods_on_claim("data", ("app",))))
    wait_until(lambda: plugin.calls("ControllerPublishVolume"), 30, what="ControllerPublishVolume sent")
    d.kill()  # SIGKILL while the driver attaches
    record = d.root / "state" / "attachments" / f"{PV_NAME}.json"
    assert json.loads(record.read_text())["state"] == "attaching", "the record is written before the call"
    wait_until(lambda: attached_nodes(plugin), 15, what="the driver finishing the slow attach")
    d.start()
    assert d.cli("wait", "demo/app", "--timeout", "60").returncode == 0, d.cli("explain", "demo/app", check=False).stdout
    # Published again (idempotent) to learn its publish_context: still one attachment, one device.
    nodes = attached_nodes(plugin)
    assert len(nodes) == 1 and len(next(iter(nodes.values()))) == 1
    assert attachments(d)[PV_NAME]["state"] == "attached"
    assert len(plugin.calls("ControllerPublishVolume")) == 2

    d.write_manifest("sc.yaml", storage_class())
    wait_until(lambda: controller_volumes(plugin) == {}, 40, what="the volume detached and deleted")
    assert len(plugin.calls("ControllerUnpublishVolume")) == 1
    order = methods(plugin, ORDER)
    assert order[-3:] == ["NodeUnstageVolume", "ControllerUnpublishVolume", "DeleteVolume"], order


def test_sigkill_during_controller_publish_then_claim_removed_before_restart_unpublishes(daemon_factory, csi_loop):
    """An attach of unknown outcome counts as attached: after the restart the volume no longer
    wanted is unpublished (never leaked), then deleted."""
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=ATTACH_ARGS)
    registered(d)
    plugin.set_fault("ControllerPublishVolume", sleep=3, count=1)
    d.write_manifest("sc.yaml", docs(storage_class(), claim(), *pods_on_claim("data", ("app",))))
    wait_until(lambda: plugin.calls("ControllerPublishVolume"), 30, what="ControllerPublishVolume sent")
    d.kill()
    d.write_manifest("sc.yaml", storage_class())
    wait_until(lambda: attached_nodes(plugin), 15, what="the driver finishing the slow attach")
    d.start()
    wait_until(lambda: controller_volumes(plugin) == {}, 40, what="the volume detached and deleted")
    assert len(plugin.calls("ControllerUnpublishVolume")) == 1
    assert len(plugin.calls("ControllerPublishVolume")) == 1
    assert plugin.calls("NodeStageVolume") == []
    wait_until(lambda: d.status()["attachments"] == [], 10, what="no attachment left")


def test_driver_without_publish_unpublish_is_not_attached(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "20"])
    plugin = csi_loop(extra_args=["--controller", "--capacity", "256Mi"])
    registered(d)
    d.write_manifest("sc.yaml", docs(storage_class(), claim(), *pods_on_claim("data", ("app",))))
    assert d.cli("wait", "demo/app", "--timeout", "60").returncode == 0
    assert methods(plugin, ORDER) == ["CreateVolume", "NodeStageVolume", "NodePublishVolume"]
    assert d.status()["attachments"] == []
    assert not (d.root / "state" / "attachments" / f"{PV_NAME}.json").exists()
    d.write_manifest("sc.yaml", storage_class())
    wait_until(lambda: controller_volumes(plugin) == {}, 40, what="the volume deleted")
    assert plugin.calls("ControllerUnpublishVolume") == []
