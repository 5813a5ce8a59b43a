"""Issue 12 item 4, end to end: ``volumemanager drain`` / ``uncordon`` with the real daemon on
real mounts: a disk emptyDir, a Memory emptyDir, a hostPath and a local PV on a loop device."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.daemon_harness import wait_until
from tests.fixtures_mounts import loop_device_factory, require_root, require_tools  # noqa: F401 - fixture

pytestmark = [pytest.mark.timeout(150)]


@pytest.fixture(autouse=True)
def _root():
    require_root()
    require_tools("losetup", "blkid", "mkfs.ext4")


def web_pod(host_dir: str, name: str = "web") -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: demo}}
spec:
  volumes:
  - name: cache
    emptyDir: {{}}
  - name: mem
    emptyDir: {{medium: Memory, sizeLimit: 16Mi}}
  - name: host
    hostPath: {{path: {host_dir}, type: Directory}}
"""


def db_pod(dev: str) -> str:
    return f"""\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: pv1}}
spec:
  local: {{path: {dev}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data, namespace: demo}}
spec: {{volumeName: pv1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: db, namespace: demo}}
spec:
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: data}}
"""


LATE_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: late, namespace: demo}
spec:
  volumes:
  - name: scratch
    emptyDir: {}
"""


def mount_points(d) -> list[str]:
    return sorted(m.mount_point for m in d.mounts())


def pod_dirs(d) -> list[str]:
    try:
        return os.listdir(d.root / "pods")
    except FileNotFoundError:
        return []


def assert_clean(d) -> None:
    assert mount_points(d) == [], "mounts left under the root dir"
    assert pod_dirs(d) == [], "pods/<uid> dirs left"
    assert not (d.root / "plugins/kubernetes.io/local-volume/mounts/pv1").exists(), "global mount dir left"


def row(d, pod: str, volume: str) -> dict:
    return [v for v in d.status()["volumes"] if v["pod"] == pod and v["volume"] == volume][0]


def start_all(d, tmp_path, loop) -> str:
    host_dir = tmp_path / "hostdata"
    host_dir.mkdir(exist_ok=True)
    d.write_manifest("web.yaml", web_pod(str(host_dir)))
    d.write_manifest("db.yaml", db_pod(loop.path))
    assert d.cli("wait", "demo/web", "--timeout", "30").returncode == 0
    assert d.cli("wait", "demo/db", "--timeout", "30").returncode == 0
    return str(host_dir)


def test_dry_run_drain_new_pods_wait_uncordon_and_restart_resume(daemon_factory, tmp_path, loop_device_factory):
    loop = loop_device_factory(size_mb=32)
    d = daemon_factory()
    host_dir = start_all(d, tmp_path, loop)
    with open(os.path.join(row(d, "demo/db", "data")["mount_path"], "keep.txt"), "w") as f:
        f.write("precious")
    with open(os.path.join(host_dir, "host.txt"), "w") as f:
        f.write("the host's")
    before = mount_points(d)
    assert len(before) == 4  # tmpfs, hostPath bind, local PV global mount and its pod view

    # --dry-run lists every step and changes nothing.
    r = d.cli("drain", "--dry-run")
    assert "dry run: nothing changed" in r.stdout
    assert r.stdout.count("unmount_volume") == 4, r.stdout  # cache, mem, host, data
    assert "unmount_device" in r.stdout and "local-volume/mounts/pv1" in r.stdout
    assert mount_points(d) == before
    assert d.status()["drained"] is None
    assert d.cli("explain", "demo/web").returncode == 0

    # drain: everything torn down in order, exit 0, nothing left.
    r = d.cli("drain", "--timeout", "60", check=False, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr + d.log(3000)
    assert "node drained" in r.stdout and "drain:" in r.stdout  # non-tty: plain progress lines
    assert_clean(d)
    log = d.log()
    # The PV's global mount goes after its pod's view (other pods' views, in lanes of their own,
    # may finish later: only this volume's order is promised).
    pv = "kubernetes.io/local-volume/pv1"
    assert log.rfind(f"unmount_device succeeded for {pv}") > log.rfind(f"unmount_volume succeeded for {pv}") > -1
    st = d.status()
    assert st["drained"]["complete"] is True and st["drained"]["volumes_left"] == 0
    assert st["drained"]["volumes_total"] == 4  # 3 of web (per pod), pv1
    assert {v["pod"] for v in st["volumes"]} == {"demo/web", "demo/db"}  # still desired, not mounted
    assert all(v["state"] != "mounted" for v in st["volumes"])
    assert open(os.path.join(host_dir, "host.txt")).read() == "the host's", "a hostPath's contents are the host's"
    assert "drained since" in d.cli("status").stdout  # the table's title says so

    # A pod added while drained is read (status, explain) but not mounted.
    d.write_manifest("late.yaml", LATE_POD)
    wait_until(lambda: any(v["pod"] == "demo/late" for v in d.status()["volumes"]), what="the late pod read")
    r = d.cli("explain", "demo/late", check=False)
    assert r.returncode == 1 and "node is drained since" in r.stdout and "not mounting" in r.stdout
    assert d.cli("wait", "demo/late", "--timeout", "1", check=False).returncode == 1
    assert_clean(d)
    assert d.cli("plan").stdout.startswith("nothing to do")
    # Draining again is harmless and says so at once.
    assert d.cli("drain", "--timeout", "10").returncode == 0

    # uncordon mounts everything again, the local PV with its data (never re-formatted).
    r = d.cli("uncordon")
    assert "uncordoned" in r.stdout
    for pod in ("demo/web", "demo/db", "demo/late"):
        assert d.cli("wait", pod, "--timeout", "30").returncode == 0, d.cli("explain", pod, check=False).stdout
    assert d.status()["drained"] is None
    with open(os.path.join(row(d, "demo/db", "data")["mount_path"], "keep.txt")) as f:
        assert f.read() == "precious"
    assert "not drained" in d.cli("uncordon").stdout

    # A restart also resumes: drained lives in memory only.
    assert d.cli("drain", "--timeout", "50").returncode == 0
    assert_clean(d)
    assert d.stop() == 0
    d.start()
    assert d.status()["drained"] is None
    for pod in ("demo/web", "demo/db", "demo/late"):
        assert d.cli("wait", pod, "--timeout", "30").returncode == 0
    # Leave the node clean for the fixtures: the way to undo the demo.
    assert d.cli("drain", "--timeout", "50", "--json").returncode == 0
    assert_clean(d)


def test_drain_covers_mounts_adopted_at_start(daemon_factory, tmp_path, loop_device_factory):
    loop = loop_device_factory(size_mb=32)
    d = daemon_factory()
    start_all(d, tmp_path, loop)
    mounts = mount_points(d)
    d.stop()
    d.start()  # adopts the mounts it finds
    wait_until(lambda: all(v["state"] == "mounted" for v in d.status()["volumes"]), what="adopted as mounted")
    assert mount_points(d) == mounts
    r = d.cli("drain", "--timeout", "60", "--json", check=False, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"complete": true' in r.stdout
    assert_clean(d)


def test_busy_volume_stops_the_drain_until_its_holder_goes(daemon_factory, tmp_path):
    host_dir = tmp_path / "hostdata"
    host_dir.mkdir()
    d = daemon_factory()
    d.write_manifest("web.yaml", web_pod(str(host_dir)))
    assert d.cli("wait", "demo/web", "--timeout", "30").returncode == 0
    holders: list[subprocess.Popen] = []
    try:
        for vol in ("cache", "mem"):
            holders.append(subprocess.Popen(["sleep", "600"], cwd=row(d, "demo/web", vol)["mount_path"]))
        r = d.cli("drain", "--timeout", "6", check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "timed out after 6s" in r.stdout
        # Neither a tmpfs nor a disk emptyDir in use is torn down: each is named, with its holder.
        for vol, holder in zip(("cache", "mem"), holders):
            line = [x for x in r.stdout.splitlines() if f"demo/web volume {vol} " in x]
            assert line and f"pid {holder.pid} (sleep)" in line[0], r.stdout
        drained = d.status()["drained"]
        assert sorted(x["volume"] for x in drained["left"]) == ["cache", "mem"]  # the hostPath went
        assert {h["pid"] for x in drained["refused"] for h in x["holders"]} == {p.pid for p in holders}
        assert not drained["complete"]
    finally:
        for p in holders:  # by PID: only what this test started
            os.kill(p.pid, signal.SIGKILL)
            p.wait(5)
    r = d.cli("drain", "--timeout", "60", check=False, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr + d.log(3000)
    assert mount_points(d) == [] and pod_dirs(d) == []
