"""Issue 14, item 5 (expand): raising a bound claim's request grows its volume, as the
external-resizer and the kubelet do: ControllerExpandVolume, the PV record's capacity, then
NodeExpandVolume on the node (online while staged, never unmounting; else after the next
stage). The reference plugin runs in Controller mode as a separate process; the order of its
calls is read off its call log, the filesystem's size off statvfs at the pod's path.

xfs throughout: ext4 online resize (resize2fs on a mounted filesystem) needs CAP_SYS_RESOURCE,
which this sandbox lacks, and mkfs.xfs wants at least 300 MB, hence the sizes."""

from __future__ import annotations

import json
import os

import pytest

from tests.csi_loop.harness import plugin_factory
from tests.daemon_harness import pods_on_claim, wait_until
from tests.fixtures_mounts import require_root, require_tools

pytestmark = [pytest.mark.timeout(240)]

DRIVER = "csi-loop.test"
CONTROLLER_ARGS = ["--controller", "--capacity", "2Gi"]
MI = 1 << 20
UID = "e0a0e000-0000-4000-8000-000000000005"
PV = f"pvc-{UID}"


def storage_class(allow: bool = True, fs_type: str = "xfs") -> str:
    return f"""\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: loop}}
provisioner: {DRIVER}
parameters:
  csi.storage.k8s.io/fstype: {fs_type}
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: {"true" if allow else "false"}
"""


def claim(size: str) -> str:
    return f"""\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data, namespace: demo, uid: "{UID}"}}
spec:
  storageClassName: loop
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: {size}}}}}
"""


def docs(*parts: str) -> str:
    return "---\n".join(parts)


@pytest.fixture(autouse=True)
def _root():
    require_root()
    require_tools("losetup", "mkfs.xfs", "xfs_growfs")


@pytest.fixture
def csi_loop(tmp_path):
    with plugin_factory(tmp_path / "drivers", registration_dir=tmp_path / "plugins_registry",
                        cleanup_roots=[tmp_path]) as make:
        yield make


def claim_of(d) -> dict:
    return {c["claim"]: c for c in d.status()["claims"]}.get("demo/data") or {}


def registered(d) -> None:
    wait_until(lambda: any(x["name"] == DRIVER and x["controller_capabilities"] for x in d.status()["drivers"]),
               15, what="driver registration with its Controller service")


def methods(plugin) -> list[str]:
    wanted = ("CreateVolume", "ControllerExpandVolume", "NodeStageVolume", "NodePublishVolume",
              "NodeExpandVolume", "NodeUnpublishVolume", "NodeUnstageVolume")
    return [c["method"] for c in plugin.calls() if c["method"] in wanted]


def pod_row(d, pod: str = "demo/app") -> dict:
    return [v for v in d.status()["volumes"] if v["pod"] == pod][0]


def fs_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def mount_id(path: str) -> int:
    """The mount ID (mountinfo field 1) of the mount at ``path``: a new one after any remount."""
    with open("/proc/self/mountinfo") as f:
        ids = [int(line.split()[0]) for line in f if line.split()[4] == path]
    assert ids, f"{path} is not a mount point"
    return ids[-1]


def test_online_expansion_grows_the_pods_filesystem_without_unmounting(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "30"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    d.write_manifest("sc.yaml", docs(storage_class(), claim("320Mi")))
    d.write_manifest("pod.yaml", docs(*pods_on_claim("data", ("app",))))
    assert d.cli("wait", "demo/app", "--timeout", "60").returncode == 0
    path = pod_row(d)["mount_path"]
    before, mid = fs_bytes(path), mount_id(path)
    with open(os.path.join(path, "kept.txt"), "w") as f:
        f.write("survives")

    d.write_manifest("sc.yaml", docs(storage_class(), claim("640Mi")))
    wait_until(lambda: (claim_of(d).get("capacity_bytes") or 0) >= 640 * MI, 40, what="the PV's capacity")
    wait_until(lambda: (pod_row(d).get("size_bytes") or 0) >= 640 * MI, 40, what="NodeExpandVolume")
    c = claim_of(d)
    assert c["requested_bytes"] == 640 * MI and c["last_error"] is None
    record = json.loads((d.root / "state" / "provisioned" / f"{PV}.json").read_text())
    assert record["spec"]["capacity"]["storage"] == str(c["capacity_bytes"])

    # Controller first, then the node, online: no unpublish, no unstage, the same mount.
    calls = methods(plugin)
    assert calls == ["CreateVolume", "NodeStageVolume", "NodePublishVolume", "ControllerExpandVolume",
                     "NodeExpandVolume"], calls
    expand = plugin.calls("ControllerExpandVolume")[0]
    print(expand)
    assert fs_bytes(path) > before + 250 * MI
    assert mount_id(path) == mid
    with open(os.path.join(path, "kept.txt")) as f:
        assert f.read() == "survives"
    node = plugin.calls("NodeExpandVolume")
    assert len(node) == 1
    # Nothing more to do: plan lists no expansion any more.
    plan = json.loads(d.cli("plan", "--json").stdout)
    assert not [a for a in plan if a["action"] in ("expand", "expand_volume")], plan


def test_class_without_allow_volume_expansion_and_shrinking_are_refused(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "30"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    d.write_manifest("sc.yaml", docs(storage_class(allow=False), claim("320Mi")))
    d.write_manifest("pod.yaml", docs(*pods_on_claim("data", ("app",))))
    assert d.cli("wait", "demo/app", "--timeout", "60").returncode == 0

    d.write_manifest("sc.yaml", docs(storage_class(allow=False), claim("400Mi")))
    wait_until(lambda: (claim_of(d).get("last_error") or {}).get("code") == "EXPANSION_NOT_ALLOWED", 20,
               what="the refused expansion")
    out = d.cli("explain", "demo/app", check=False).stdout
    print(out)
    assert "storageclass loop does not allow volume expansion" in out
    assert claim_of(d)["capacity_bytes"] < 400 * MI

    # Shrinking: refused whatever the class says, nothing called.
    d.write_manifest("sc.yaml", docs(storage_class(allow=True), claim("100Mi")))
    wait_until(lambda: (claim_of(d).get("last_error") or {}).get("code") == "VOLUME_SHRINK_REFUSED", 20,
               what="the refused shrink")
    c = claim_of(d)
    assert "never shrunk" in c["last_error"]["message"] and c["next_retry_seconds"] is None
    out = d.cli("explain", "demo/app", check=False).stdout
    print(out)
    assert "expansion refused (VOLUME_SHRINK_REFUSED)" in out
    assert plugin.calls("ControllerExpandVolume") == [] and plugin.calls("NodeExpandVolume") == []
    plan = json.loads(d.cli("plan", "--json").stdout)
    assert not [a for a in plan if a["action"] in ("expand", "expand_volume")], plan


def test_controller_expand_fault_shows_its_code_then_succeeds(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "30"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    d.write_manifest("sc.yaml", docs(storage_class(), claim("320Mi")))
    d.write_manifest("pod.yaml", docs(*pods_on_claim("data", ("app",))))
    assert d.cli("wait", "demo/app", "--timeout", "60").returncode == 0
    plugin.set_fault("ControllerExpandVolume", code="RESOURCE_EXHAUSTED", message="pool is full")

    d.write_manifest("sc.yaml", docs(storage_class(), claim("512Mi")))
    wait_until(lambda: (claim_of(d).get("last_error") or {}).get("code") == "RESOURCE_EXHAUSTED", 20,
               what="the ControllerExpandVolume error")
    c = claim_of(d)
    assert c["last_error"]["operation"] == "ControllerExpandVolume" and c["phase"] == "Bound"
    out = d.cli("explain", "demo/app", check=False).stdout
    print(out)
    assert "ControllerExpandVolume failed with RESOURCE_EXHAUSTED" in out
    plan = json.loads(d.cli("plan", "--json").stdout)
    assert any(a["action"] == "expand" and a["volume"] == "demo/data" for a in plan), plan
    assert plugin.calls("NodeExpandVolume") == []

    plugin.clear_faults()
    wait_until(lambda: (pod_row(d).get("size_bytes") or 0) >= 512 * MI, 60, what="the expansion after the fault")
    assert claim_of(d)["last_error"] is None
    assert fs_bytes(pod_row(d)["mount_path"]) > 400 * MI  # xfs keeps some for its log


def test_expansion_without_a_pod_expands_the_node_side_at_the_next_stage(daemon_factory, csi_loop):
    d = daemon_factory(extra_args=["--csi-timeout", "30"])
    plugin = csi_loop(extra_args=CONTROLLER_ARGS)
    registered(d)
    d.write_manifest("sc.yaml", docs(storage_class(), claim("320Mi")))
    wait_until(lambda: claim_of(d).get("phase") == "Bound", 30, what="claim Bound")
    # The volume gets a filesystem at its first stage: stage it once, then let it go.
    d.write_manifest("pod.yaml", docs(*pods_on_claim("data", ("app",))))
    assert d.cli("wait", "demo/app", "--timeout", "60").returncode == 0
    (d.manifests / "pod.yaml").unlink()
    wait_until(lambda: plugin.calls("NodeUnstageVolume"), 30, what="the pod's tear-down")

    d.write_manifest("sc.yaml", docs(storage_class(), claim("640Mi")))
    wait_until(lambda: (claim_of(d).get("capacity_bytes") or 0) >= 640 * MI, 40, what="ControllerExpandVolume")
    assert plugin.calls("NodeExpandVolume") == []  # nothing staged: the node side waits for a stage

    d.write_manifest("pod.yaml", docs(*pods_on_claim("data", ("app2",))))
    assert d.cli("wait", "demo/app2", "--timeout", "60").returncode == 0
    wait_until(lambda: (pod_row(d, "demo/app2").get("size_bytes") or 0) >= 640 * MI, 40,
               what="NodeExpandVolume after the stage")
    calls = methods(plugin)
    assert calls[-4:] == ["ControllerExpandVolume", "NodeStageVolume", "NodePublishVolume", "NodeExpandVolume"], calls
    assert fs_bytes(pod_row(d, "demo/app2")["mount_path"]) > 550 * MI
