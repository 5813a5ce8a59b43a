"""Issue 5: SIGKILL the daemon at random moments while pods on local PVs (loop devices) and
CSI PVs (the reference plugin) come and go; after each restart and convergence the mounts
under the root dir must be exactly the desired ones, none twice, no stale staging, and the
data written through every volume must still match its checksum.

``VM_CRASH_KILLS`` sets the number of kills (default 50); the counts are printed."""

from __future__ import annotations

import hashlib
import os
import random
import time

import pytest

from tests.csi_loop.harness import plugin_factory
from tests.daemon_harness import wait_until
from tests.fixtures_mounts import loop_device_factory  # noqa: F401 - fixture
from tests.fixtures_mounts import require_root, require_tools
from tests.plugins_flex.drivers import TMPFS as FLEX_DRIVER
from tests.plugins_flex.drivers import install_driver

KILLS = int(os.environ.get("VM_CRASH_KILLS", "50"))
SEED = int(os.environ.get("VM_CRASH_SEED", str(random.randrange(1 << 30))))
DRIVER = "csi-loop.test"
CONVERGE_SECONDS = 60.0

pytestmark = [pytest.mark.timeout(1800), pytest.mark.slow]


@pytest.fixture
def csi_loop(tmp_path):
    with plugin_factory(tmp_path / "drivers", registration_dir=tmp_path / "plugins_registry",
                        cleanup_roots=[tmp_path]) as make:
        yield make


def pod_manifest(pod: str, claim: str) -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: crash}}
spec:
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: {claim}}}
  - name: mem
    emptyDir: {{medium: Memory, sizeLimit: 4Mi}}
  - name: cfg
    configMap: {{name: crash-cfg}}
  - name: creds
    secret: {{secretName: crash-creds}}
  - name: info
    downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]}}
  - name: bundle
    projected: {{sources: [{{configMap: {{name: crash-cfg}}}}, {{secret: {{name: crash-creds}}}}]}}
  - name: flex
    flexVolume: {{driver: {FLEX_DRIVER}, options: {{size: 4m}}}}
"""

# The configMap and downwardAPI (plain dirs on disk), secret and projected (tmpfs) volumes
# every pod also mounts.
OBJECTS = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: crash-cfg, namespace: crash}
data: {setting: "on"}
---
apiVersion: v1
kind: Secret
metadata: {name: crash-creds, namespace: crash}
stringData: {token: crash-token}
"""
# Plugins whose pod view is a directory on disk, not a mount point.
ON_DISK = ("configmap", "downward-api")


def storage_manifest(local_devices: list[str], csi_handles: list[str]) -> str:
    docs = []
    for i, dev in enumerate(local_devices):
        docs.append(f"""\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: local-{i}}}
spec:
  local: {{path: {dev}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: local-{i}, namespace: crash}}
spec: {{volumeName: local-{i}}}
""")
    for h in csi_handles:
        docs.append(f"""\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {h}}}
spec:
  accessModes: [ReadWriteMany]
  csi: {{driver: {DRIVER}, volumeHandle: {h}, fsType: ext4, volumeAttributes: {{size: 16Mi}}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {h}, namespace: crash}}
spec: {{volumeName: {h}}}
""")
    return "---\n".join(docs)


def test_random_kills_lose_nothing(daemon_factory, csi_loop, loop_device_factory, tmp_path):
    require_root()
    require_tools("losetup", "mkfs.ext4", "blkid", "jq")
    rng = random.Random(SEED)
    print(f"crash test seed {SEED} (VM_CRASH_SEED to replay), {KILLS} kills")
    plugin = csi_loop()
    locals_ = [loop_device_factory(size_mb=16).path for _ in range(2)]
    handles = ["csi-a", "csi-b"]
    claims = [f"local-{i}" for i in range(len(locals_))] + handles
    # Two pods per claim: staging is shared and must outlive the first pod.
    pods = {f"p{i}-{c}": c for c in claims for i in range(2)}

    # A FlexVolume driver (not attachable: mount/unmount of a tmpfs), a shell script like the
    # drivers written elsewhere; killed with the daemon or not, its mounts are adopted.
    install_driver(tmp_path / "flex-plugins", FLEX_DRIVER, tmp_path / "flex-work")
    d = daemon_factory(start=False, extra_args=["--csi-timeout", "5",
                                                "--volume-plugin-dir", str(tmp_path / "flex-plugins")])
    d.write_manifest("storage.yaml", storage_manifest(locals_, handles))
    d.write_manifest("objects.yaml", OBJECTS)
    d.start()
    wait_until(lambda: d.status()["drivers"], 20, what="driver registration")

    desired: set[str] = set()
    checksums: dict[str, str] = {}  # claim -> sha256 of the file written through it
    counts = {"kills": 0, "kills_during_unpublish_unstage": 0, "leaked": 0, "duplicate": 0, "missing": 0,
              "mismatch": 0, "converged": 0}

    def converge_and_check() -> None:
        for pod in desired:
            r = d.cli("wait", f"crash/{pod}", "--timeout", str(CONVERGE_SECONDS), check=False)
            assert r.returncode == 0, f"{pod} did not converge: {r.stdout}{r.stderr}\n{d.log(4000)}"
        st = d.status()

        def expected_paths(status) -> set[str]:
            out: set[str] = set()
            for v in status["volumes"]:
                if v["desired"] and v["plugin"].rpartition("/")[2] not in ON_DISK:
                    out.add(v["mount_path"])
                    if v.get("device_mount_path"):
                        out.add(v["device_mount_path"])
            return out

        def settled():
            s = d.status()
            if any(not v["desired"] for v in s["volumes"]):
                return None
            points = [m.mount_point for m in d.mounts()]
            return s if set(points) == expected_paths(s) else None

        try:
            st = wait_until(settled, CONVERGE_SECONDS, 0.1, "the mounts to match the desired state")
        except AssertionError:
            pass
        points = [m.mount_point for m in d.mounts()]
        expected = expected_paths(st)
        counts["duplicate"] += len(points) - len(set(points))
        counts["leaked"] += len(set(points) - expected)
        counts["missing"] += len(expected - set(points))
        assert not set(points) ^ expected and len(points) == len(set(points)), (
            f"leaked {sorted(set(points) - expected)}, missing {sorted(expected - set(points))}, "
            f"desired pods {sorted(desired)}\n{d.log(4000)}")
        staged = {v["device_mount_path"] for v in st["volumes"] if v.get("device_mount_path")}
        for m in d.mounts():
            if "/plugins/" in m.mount_point:
                assert m.mount_point in staged, f"stale staging {m.mount_point}"
        for v in st["volumes"]:
            claim = pods[v["pod"].split("/")[1]]
            if v["volume"] in ("cfg", "creds"):
                name, want = ("setting", "on") if v["volume"] == "cfg" else ("token", "crash-token")
                with open(os.path.join(v["mount_path"], name)) as f:
                    if f.read() != want:
                        counts["mismatch"] += 1
            if v["volume"] != "data":
                continue
            path = os.path.join(v["mount_path"], "payload.bin")
            if claim not in checksums:
                payload = rng.randbytes(4096)
                with open(path, "wb") as f:
                    f.write(payload)
                    f.flush()
                    os.fsync(f.fileno())
                checksums[claim] = hashlib.sha256(payload).hexdigest()
            else:
                with open(path, "rb") as f:
                    if hashlib.sha256(f.read()).hexdigest() != checksums[claim]:
                        counts["mismatch"] += 1
        assert counts["mismatch"] == 0
        counts["converged"] += 1

    def toggle(n: int) -> None:
        for pod in rng.sample(sorted(pods), n):
            if pod in desired:
                desired.discard(pod)
                (d.manifests / f"{pod}.yaml").unlink()
            else:
                desired.add(pod)
                d.write_manifest(f"{pod}.yaml", pod_manifest(pod, pods[pod]))

    def kill_and_restart() -> None:
        d.kill()
        counts["kills"] += 1
        d.start()

    # A deterministic kill between NodeUnpublish and NodeUnstage first.
    desired.add("p0-csi-a")
    d.write_manifest("p0-csi-a.yaml", pod_manifest("p0-csi-a", "csi-a"))
    converge_and_check()
    plugin.set_fault("NodeUnstageVolume", sleep=3, count=1)
    desired.discard("p0-csi-a")
    (d.manifests / "p0-csi-a.yaml").unlink()
    wait_until(lambda: plugin.calls("NodeUnstageVolume"), 20, what="unpublish done, unstage in flight")
    kill_and_restart()
    counts["kills_during_unpublish_unstage"] += 1
    plugin.clear_faults()
    converge_and_check()

    while counts["kills"] < KILLS:
        toggle(rng.randint(1, 3))
        time.sleep(rng.uniform(0.0, 0.25))
        kill_and_restart()
        if counts["kills"] % 5 == 0 or counts["kills"] >= KILLS:
            converge_and_check()
    # Finally everything goes away: nothing may stay mounted.
    for pod in list(desired):
        (d.manifests / f"{pod}.yaml").unlink()
    desired.clear()
    wait_until(lambda: not d.mounts(), CONVERGE_SECONDS, what="everything unmounted at the end")
    pods_dir = d.root / "pods"
    wait_until(lambda: not pods_dir.exists() or not any(pods_dir.iterdir()), CONVERGE_SECONDS,
               what="no pod dir left at the end (configMap dirs on disk removed too)")
    print("crash test:", ", ".join(f"{k}={v}" for k, v in counts.items()))
    assert counts["leaked"] == counts["duplicate"] == counts["missing"] == counts["mismatch"] == 0
