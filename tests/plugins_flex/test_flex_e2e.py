"""FlexVolume end to end (issue 13, items 4 and 5): the real daemon with ``--volume-plugin-dir``
and the shell-script drivers of ``drivers.py``; what the drivers were asked is read off the call
log each keeps, so the kubelet's call order is checked as a driver sees it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.daemon_harness import daemon_factory, wait_until  # noqa: F401 - fixture
from tests.fixtures_mounts import mounts_under
from tests.plugins_flex.drivers import LOOPDISK, TMPFS, install_driver, read_call_log, set_behaviour, verbs

pytestmark = [pytest.mark.timeout(120)]

MOUNT_VERBS = {"attach", "waitforattach", "mountdevice", "mount"}


def _pod(name: str, volume: str, driver: str, options: dict[str, str], fs_type: str | None = None) -> str:
    fs = f", fsType: {fs_type}" if fs_type else ""
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: demo}}
spec:
  volumes:
  - name: {volume}
    flexVolume: {{driver: {driver}{fs}, options: {json.dumps(options)}}}
"""


def _pv_pod(name: str, pv: str, driver: str, options: dict[str, str]) -> str:
    return f"""\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}}}
spec:
  capacity: {{storage: 64Mi}}
  accessModes: [ReadWriteOnce]
  flexVolume: {{driver: {driver}, fsType: ext4, options: {json.dumps(options)}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {pv}-claim, namespace: demo}}
spec: {{volumeName: {pv}, accessModes: [ReadWriteOnce]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: demo}}
spec:
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: {pv}-claim}}
"""


def _row(d, pod: str, volume: str) -> dict | None:
    for v in d.status()["volumes"]:
        if v["pod"] == pod and v["volume"] == volume:
            return v
    return None


def _state(d, pod: str, volume: str) -> str | None:
    row = _row(d, pod, volume)
    return row["state"] if row else None


@pytest.fixture
def flex_env(flex_dirs, daemon_factory):  # noqa: F811 - fixture
    plugin_dir, work_dir = flex_dirs

    def make(start: bool = True):
        return daemon_factory(["--volume-plugin-dir", str(plugin_dir)], start=start)

    return plugin_dir, work_dir, make


def test_attachable_driver_kubelet_call_order_restart_and_teardown(flex_env, backing_file):
    plugin_dir, work_dir, make = flex_env
    drv = install_driver(plugin_dir, LOOPDISK, work_dir)
    d = make(start=False)
    d.write_manifest("pv.yaml", _pv_pod("app", "flexpv", LOOPDISK, {"backingFile": str(backing_file)}))
    d.start()
    assert d.cli("wait", "demo/app", "--timeout", "40").returncode == 0, d.log(3000)
    pod_path = d.root / "pods"
    row = _row(d, "demo/app", "data")
    assert row["state"] == "mounted"
    assert row["mount_path"].endswith("/volumes/test~loopdisk/flexpv")
    assert row["device_mount_path"] == str(d.root / "plugins/kubernetes.io/flexvolume/test/loopdisk/mounts/flexpv")
    calls = read_call_log(drv)
    assert [c[0] for c in calls if c[0] != "init"] == ["attach", "waitforattach", "mountdevice", "mount"]
    attach = next(c for c in calls if c[0] == "attach")
    opts = json.loads(attach[1])
    assert opts["kubernetes.io/pvOrVolumeName"] == "flexpv" and attach[2] == "testnode"
    mount = next(c for c in calls if c[0] == "mount")
    assert mount[1] == row["mount_path"]
    assert json.loads(mount[2])["kubernetes.io/pod.name"] == "app"
    mounted = {m.mount_point for m in mounts_under(pod_path.parent)}
    assert row["mount_path"] in mounted and row["device_mount_path"] in mounted
    # status/explain/plan name the plugin and its calls.
    assert row["plugin"] == "kubernetes.io/flexvolume"
    explain = d.cli("explain", "demo/app").stdout
    assert "staged at" in explain

    # A restart adopts both mounts: no mount call of any kind.
    before = len(read_call_log(drv))
    ids = sorted((m.mount_id, m.mount_point) for m in d.mounts())
    assert d.stop() == 0
    d.start()
    wait_until(lambda: _state(d, "demo/app", "data") == "mounted", 20, what="adopted after restart")
    assert sorted((m.mount_id, m.mount_point) for m in d.mounts()) == ids
    new_verbs = [c[0] for c in read_call_log(drv)[before:]]
    assert not MOUNT_VERBS & set(new_verbs), new_verbs

    # The pod goes: unmount, unmountdevice, detach, in that order; nothing left mounted or attached.
    before = len(read_call_log(drv))
    d.write_manifest("pv.yaml", _pv_pod("app", "flexpv", LOOPDISK, {"backingFile": str(backing_file)})
                     .split("---\n")[0])
    wait_until(lambda: "detach" in verbs(drv)[before:], 40, what=f"detach (log: {d.log(3000)})")
    torn = [v for v in verbs(drv)[before:] if v != "init"]
    assert torn == ["unmount", "unmountdevice", "detach"], torn
    wait_until(lambda: not d.mounts(), 10, what="no mount left")
    import subprocess

    # (The kernel lets go of a detached loop device asynchronously.)
    wait_until(lambda: str(backing_file) not in subprocess.run(["losetup", "-a"], capture_output=True,
                                                                text=True).stdout, 10, what="the loop detached")
    assert not (d.root / "plugins/kubernetes.io/flexvolume/test/loopdisk/mounts/flexpv").exists()


def test_driver_installed_after_start_is_probed_and_the_waiting_pod_mounts(flex_env):
    plugin_dir, work_dir, make = flex_env
    d = make(start=False)
    d.write_manifest("pod.yaml", _pod("late", "scratch", TMPFS, {"size": "8m"}))
    d.start()
    wait_until(lambda: (_row(d, "demo/late", "scratch") or {}).get("waiting_for") == f"FlexVolume driver {TMPFS}",
               20, what=f"waiting for the driver ({d.status()})")
    assert "FlexVolume driver test/tmpfs" in d.cli("explain", "demo/late", check=False).stdout
    # The plugin dir itself did not exist: the driver dir appears whole.
    drv = install_driver(plugin_dir, TMPFS, work_dir, atomic_dir=True)
    assert d.cli("wait", "demo/late", "--timeout", "40").returncode == 0, d.log(3000)
    assert verbs(drv) == ["init", "mount"]
    row = _row(d, "demo/late", "scratch")
    assert row["mount_path"].endswith("/volumes/test~tmpfs/scratch")
    assert any(m.mount_point == row["mount_path"] and m.fs_type == "tmpfs" for m in d.mounts())

    # Not attachable: a restart calls nothing that mounts; the pod's removal calls unmount.
    assert d.stop() == 0
    d.start()
    wait_until(lambda: _state(d, "demo/late", "scratch") == "mounted", 20, what="adopted")
    assert [v for v in verbs(drv) if v != "init"] == ["mount"]
    (d.manifests / "pod.yaml").unlink()
    wait_until(lambda: not d.mounts(), 30, what=f"torn down ({d.log(2000)})")
    wait_until(lambda: not Path(row["mount_path"]).exists(), 30, what=f"the pod's dir removed ({d.log(2000)})")
    assert [v for v in verbs(drv) if v != "init"] == ["mount", "unmount"]


def test_failure_reply_message_reaches_explain(flex_env):
    plugin_dir, work_dir, make = flex_env
    drv = install_driver(plugin_dir, TMPFS, work_dir)
    set_behaviour(drv, "fail", "mount", "quota exceeded on pool gold")
    d = make(start=False)
    d.write_manifest("pod.yaml", _pod("bad", "scratch", TMPFS, {}))
    d.start()
    wait_until(lambda: "quota exceeded on pool gold" in ((_row(d, "demo/bad", "scratch") or {}).get("last_error")
                                                         or ""), 20, what="the driver's message in status")
    row = _row(d, "demo/bad", "scratch")
    assert row["error_code"] == "DRIVER_FAILURE" and row["state"] != "mounted"
    r = d.cli("explain", "demo/bad", check=False)
    assert r.returncode == 1 and "quota exceeded on pool gold" in r.stdout, r.stdout
    assert "mount" in r.stdout
    assert not d.mounts()


def test_not_supported_mountdevice_falls_back_on_format_and_mount(flex_env, backing_file):
    plugin_dir, work_dir, make = flex_env
    drv = install_driver(plugin_dir, LOOPDISK, work_dir)
    set_behaviour(drv, "notsupported", "mountdevice")
    set_behaviour(drv, "notsupported", "mount")
    set_behaviour(drv, "notsupported", "unmount")
    set_behaviour(drv, "notsupported", "unmountdevice")
    d = make(start=False)
    d.write_manifest("pv.yaml", _pv_pod("app", "fbpv", LOOPDISK, {"backingFile": str(backing_file)}))
    d.start()
    assert d.cli("wait", "demo/app", "--timeout", "40").returncode == 0, d.log(3000)
    row = _row(d, "demo/app", "data")
    dmp = row["device_mount_path"]
    by_point = {m.mount_point: m for m in d.mounts()}
    # The built-in MountDevice made an ext4 on the blank loop device; the built-in SetUp bound it.
    assert by_point[dmp].fs_type == "ext4" and by_point[dmp].source.startswith("/dev/loop")
    assert by_point[row["mount_path"]].fs_type == "ext4"
    assert [v for v in verbs(drv) if v != "init"] == ["attach", "waitforattach", "mountdevice", "mount"]
    d.write_manifest("pv.yaml", _pv_pod("app", "fbpv", LOOPDISK, {"backingFile": str(backing_file)})
                     .split("---\n")[0])
    wait_until(lambda: "detach" in verbs(drv), 40, what=f"detach ({d.log(2000)})")
    wait_until(lambda: not d.mounts(), 10, what="the built-in unmounts")
    assert [v for v in verbs(drv) if v != "init"][-3:] == ["unmount", "unmountdevice", "detach"]


def test_removing_a_driver_leaves_its_mounted_volumes_alone(flex_env, backing_file):
    """Whether a volume is attachable (hence its id) is the driver's answer; it must not change
    under a mounted volume when the driver goes, or the volume would be torn down."""
    import shutil

    plugin_dir, work_dir, make = flex_env
    drv = install_driver(plugin_dir, LOOPDISK, work_dir)
    d = make(start=False)
    d.write_manifest("pv.yaml", _pv_pod("app", "keep", LOOPDISK, {"backingFile": str(backing_file)}))
    d.start()
    assert d.cli("wait", "demo/app", "--timeout", "40").returncode == 0, d.log(3000)
    ids = sorted((m.mount_id, m.mount_point) for m in d.mounts())
    shutil.rmtree(drv.dir)
    wait_until(lambda: "FlexVolume driver test/loopdisk removed" in d.log(), 20, what="the prober to see it go")
    d.cli("status")  # one more pass
    assert _state(d, "demo/app", "data") == "mounted"
    assert sorted((m.mount_id, m.mount_point) for m in d.mounts()) == ids
    assert [v for v in verbs(drv) if v in ("unmount", "unmountdevice", "detach")] == []
    # Without its driver the pod's removal waits for it, and goes on once it is back.
    d.write_manifest("pv.yaml", _pv_pod("app", "keep", LOOPDISK, {"backingFile": str(backing_file)})
                     .split("---\n")[0])
    wait_until(lambda: any(v.get("waiting_for") == "FlexVolume driver test/loopdisk" for v in d.status()["volumes"]),
               20, what=f"teardown waiting for the driver ({d.status()['volumes']})")
    assert sorted((m.mount_id, m.mount_point) for m in d.mounts()) == ids
    install_driver(plugin_dir, LOOPDISK, work_dir, atomic_dir=True)
    wait_until(lambda: not d.mounts() and "detach" in verbs(drv), 40,
               what=f"torn down once the driver is back ({d.log(2000)})")
    assert [v for v in verbs(drv) if v in ("unmount", "unmountdevice", "detach")] == \
        ["unmount", "unmountdevice", "detach"]


def test_secret_ref_reaches_mount_only_base64_and_never_the_log(flex_env):
    plugin_dir, work_dir, make = flex_env
    drv = install_driver(plugin_dir, TMPFS, work_dir)
    d = make(start=False)
    d.write_manifest("pod.yaml", """\
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: demo}
stringData: {password: s3cr3t-flex-pass}
---
apiVersion: v1
kind: Pod
metadata: {name: sec, namespace: demo}
spec:
  volumes:
  - name: scratch
    flexVolume: {driver: test/tmpfs, secretRef: {name: creds}, readOnly: true, options: {size: 4m}}
""")
    d.start()
    assert d.cli("wait", "demo/sec", "--timeout", "40").returncode == 0, d.log(3000)
    mount = next(c for c in read_call_log(drv) if c[0] == "mount")
    opts = json.loads(mount[2])
    import base64

    assert base64.b64decode(opts["kubernetes.io/secret/password"]) == b"s3cr3t-flex-pass"
    assert opts["kubernetes.io/readwrite"] == "ro" and opts["size"] == "4m"
    assert opts["kubernetes.io/pod.namespace"] == "demo" and opts["kubernetes.io/serviceAccount.name"] == ""
    assert "s3cr3t-flex-pass" not in d.log() and opts["kubernetes.io/secret/password"] not in d.log()
