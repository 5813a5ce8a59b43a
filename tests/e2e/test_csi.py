"""Issue 4, end to end: the daemon drives the reference CSI node plugin (a separate process
backed by loop devices), discovered through plugins_registry/ like the kubelet does."""

from __future__ import annotations

import pytest

from tests.csi_loop.harness import plugin_factory
from tests.daemon_harness import pods_on_claim, wait_until
from tests.fixtures_mounts import require_root, require_tools

pytestmark = [pytest.mark.timeout(180)]

DRIVER = "csi-loop.test"


def csi_pv(name: str = "pv-csi", handle: str = "vol-1", driver: str = DRIVER, claim: str = "data",
           pods: tuple[str, ...] = ("app",), extra: str = "") -> str:
    docs = [f"""\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {name}}}
spec:
  accessModes: [ReadWriteOnce]
  csi:
    driver: {driver}
    volumeHandle: {handle}
    fsType: ext4
    volumeAttributes: {{size: 32Mi}}{extra}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}, namespace: demo}}
spec: {{volumeName: {name}}}
"""]
    return "---\n".join(docs + pods_on_claim(claim, pods))


@pytest.fixture(autouse=True)
def _root():
    require_root()
    require_tools("losetup", "mkfs.ext4")


@pytest.fixture
def csi_loop(tmp_path):
    with plugin_factory(tmp_path / "drivers", registration_dir=tmp_path / "plugins_registry",
                        cleanup_roots=[tmp_path]) as make:
        yield make


def names(plugin, method: str) -> list[str]:
    return [c.get("volume_id") for c in plugin.calls(method)]


def test_stage_once_publish_per_pod_and_reverse_order_on_delete(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "10"])
    plugin = csi_loop()
    wait_until(lambda: any(x["name"] == DRIVER for x in d.status()["drivers"]), 15, what="driver registration")
    drv = [x for x in d.status()["drivers"] if x["name"] == DRIVER][0]
    assert "STAGE_UNSTAGE_VOLUME" in drv["capabilities"]
    d.write_manifest("pv.yaml", csi_pv(pods=("app",)))
    assert d.cli("wait", "demo/app", "--timeout", "30").returncode == 0
    assert len(plugin.calls("NodeStageVolume")) == 1 and len(plugin.calls("NodePublishVolume")) == 1
    row = [v for v in d.status()["volumes"] if v["pod"] == "demo/app"][0]
    assert row["mount_path"].endswith("/volumes/kubernetes.io~csi/pv-csi/mount")
    assert "/plugins/kubernetes.io/csi/csi-loop.test/" in row["device_mount_path"]
    points = {m.mount_point for m in d.mounts()}
    assert row["mount_path"] in points and row["device_mount_path"] in points
    with open(row["mount_path"] + "/f.txt", "w") as f:
        f.write("kept")

    d.write_manifest("pv.yaml", csi_pv(pods=("app", "app2")))
    assert d.cli("wait", "demo/app2", "--timeout", "30").returncode == 0
    assert len(plugin.calls("NodeStageVolume")) == 1, "a second pod gets only a NodePublish"
    assert len(plugin.calls("NodePublishVolume")) == 2

    (d.manifests / "pv.yaml").unlink()
    wait_until(lambda: len(plugin.calls("NodeUnstageVolume")) == 1, 30, what="NodeUnstage")
    methods = [c["method"] for c in plugin.calls() if c["method"] in ("NodeUnpublishVolume", "NodeUnstageVolume")]
    assert methods == ["NodeUnpublishVolume", "NodeUnpublishVolume", "NodeUnstageVolume"]
    wait_until(lambda: not d.mounts(), what="nothing mounted under the root dir")


def test_driver_without_stage_unstage_gets_no_stage(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "10"])
    plugin = csi_loop(no_stage=True)
    wait_until(lambda: d.status()["drivers"], 15, what="driver registration")
    d.write_manifest("pv.yaml", csi_pv())
    assert d.cli("wait", "demo/app", "--timeout", "30").returncode == 0
    assert plugin.calls("NodeStageVolume") == [] and len(plugin.calls("NodePublishVolume")) == 1
    (d.manifests / "pv.yaml").unlink()
    wait_until(lambda: len(plugin.calls("NodeUnpublishVolume")) == 1, 30, what="NodeUnpublish")
    wait_until(lambda: not d.mounts(), what="nothing mounted")
    assert plugin.calls("NodeUnstageVolume") == []


def test_hung_call_is_uncertain_then_converges(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "1.5"])
    plugin = csi_loop()
    plugin.set_fault("NodePublishVolume", sleep=3, count=1)
    wait_until(lambda: d.status()["drivers"], 15, what="driver registration")
    d.write_manifest("pv.yaml", csi_pv())
    wait_until(lambda: [v["state"] for v in d.status()["volumes"]] == ["uncertain"], 20, what="uncertain state")
    assert d.cli("wait", "demo/app", "--timeout", "30").returncode == 0
    mps = [m.mount_point for m in d.mounts()]
    assert len(mps) == len(set(mps)), f"duplicate mounts: {mps}"


def test_final_error_shows_its_grpc_code_in_explain(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "10"])
    plugin = csi_loop()
    plugin.set_fault("NodeStageVolume", code="INVALID_ARGUMENT", message="bad fsType for this driver", count=100)
    wait_until(lambda: d.status()["drivers"], 15, what="driver registration")
    d.write_manifest("pv.yaml", csi_pv())
    wait_until(lambda: [v["state"] for v in d.status()["volumes"]] == ["error"], 20, what="the error state")
    # Between two retries (an explain taken while a retry runs says "in progress" instead).
    def explained():
        out = d.cli("explain", "demo/app", check=False)
        return out if "next retry in" in out.stdout else None

    out = wait_until(explained, 20, 0.1, what="an explanation between two retries")
    assert out.returncode == 1
    assert "NodeStageVolume" in out.stdout and "INVALID_ARGUMENT" in out.stdout and "bad fsType" in out.stdout


def test_unregistered_driver_is_named_in_explain(daemon):
    daemon.write_manifest("pv.yaml", csi_pv(driver="csi.absent.example"))
    wait_until(lambda: [v["state"] for v in daemon.status()["volumes"]] == ["waiting"], 15, what="waiting")
    out = daemon.cli("explain", "demo/app", check=False).stdout
    assert "CSI driver csi.absent.example: not registered" in out


def test_plugin_killed_and_restarted_midway_converges(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "3"])
    plugin = csi_loop()
    wait_until(lambda: d.status()["drivers"], 15, what="driver registration")
    d.write_manifest("pv.yaml", csi_pv(pods=("app", "app2")))
    assert d.cli("wait", "demo/app", "--timeout", "30").returncode == 0
    plugin.set_fault("NodeUnpublishVolume", sleep=30, count=1)
    (d.manifests / "pv.yaml").unlink()
    wait_until(lambda: plugin.calls("NodeUnpublishVolume"), 15, what="an unpublish in flight")
    plugin.kill()
    plugin.clear_faults()
    plugin.start()
    wait_until(lambda: len(plugin.calls("NodeUnstageVolume")) >= 1, 60, what="the NodeUnstage after the restart")
    wait_until(lambda: not d.mounts(), 30, what="nothing mounted")
    assert d.status()["volumes"] == []
