"""Issue 13.3, end to end: a pod's ``securityContext.fsGroup`` with the real daemon.

The volumes are real: a local PV directory on a tmpfs of this test holding 100,000 files, an
emptyDir, a hostPath, a read-only claim, and CSI volumes of the reference plugin on loop
devices. What is checked is what a pod would see (group, setgid, mode bits on every entry),
what ``status --json`` says the daemon did (``fs_group``), and, for the skips, that no inode
was touched (unchanged ctimes)."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest

from tests.csi_loop.harness import plugin_factory
from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root, require_tools

pytestmark = [pytest.mark.timeout(240)]

GID = 2345
DRIVER = "csi-loop.test"
FILES = 100_000
DIRS = 100


@pytest.fixture(autouse=True)
def _root():
    require_root()


def tmpfs(path) -> str:
    """A tmpfs of this test at ``path`` (the daemon fixture unmounts everything under tmp_path)."""
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,nr_inodes=400k", "fsgroup-test", str(path)], check=True)
    return str(path)


def fill(root: str, dirs: int, per_dir: int) -> None:
    for d in range(dirs):
        sub = os.path.join(root, f"d{d:03}")
        os.mkdir(sub, 0o755)
        for f in range(per_dir):
            os.close(os.open(os.path.join(sub, f"f{f:04}"), os.O_CREAT | os.O_WRONLY, 0o644))
    os.symlink("/etc/passwd", os.path.join(root, "link"))  # its target is never touched


def entries(root: str):
    """(path, lstat) of every entry below and including ``root``."""
    yield root, os.lstat(root)
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                yield e.path, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)


def wrong_entries(root: str, gid: int) -> list[str]:
    """Entries that do not follow the kubelet's fsGroup rules (symlinks: group only)."""
    bad = []
    for path, st in entries(root):
        if st.st_gid != gid:
            bad.append(path)
        elif stat.S_ISLNK(st.st_mode):
            continue
        elif st.st_mode & 0o660 != 0o660:
            bad.append(path)
        elif stat.S_ISDIR(st.st_mode) and (not st.st_mode & stat.S_ISGID or st.st_mode & 0o110 != 0o110):
            bad.append(path)
    return bad


def ctimes(root: str) -> dict[str, int]:
    return {p: st.st_ctime_ns for p, st in entries(root)}


def local_pv(name: str, path: str, claim: str) -> str:
    return f"""\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {name}}}
spec:
  accessModes: [ReadWriteOnce]
  local: {{path: {path}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}, namespace: demo}}
spec: {{volumeName: {name}}}
"""


def pod(name: str, volumes: str, fs_group: int | None = GID, policy: str | None = None) -> str:
    sc = ""
    if fs_group is not None:
        sc = f"  securityContext: {{fsGroup: {fs_group}" + (f", fsGroupChangePolicy: {policy}" if policy else "") + "}\n"
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: demo}}
spec:
{sc}  volumes:
{volumes}"""


def row(d, pod_key: str, volume: str) -> dict:
    return [v for v in d.status()["volumes"] if v["pod"] == pod_key and v["volume"] == volume][0]


def test_100000_files_get_the_group_and_on_root_mismatch_then_costs_one_stat(daemon_factory, tmp_path):
    data = tmpfs(tmp_path / "data")
    fill(data, DIRS, FILES // DIRS)
    d = daemon_factory()
    d.write_manifest("pv.yaml", local_pv("pv-big", data, "big"))
    t0 = time.monotonic()
    d.write_manifest("p1.yaml", pod("walker", "  - name: vol\n    persistentVolumeClaim: {claimName: big}\n"))
    assert d.cli("wait", "demo/walker", "--timeout", "90").returncode == 0
    took = time.monotonic() - t0
    fs = row(d, "demo/walker", "vol")["fs_group"]
    assert fs["gid"] == GID and fs["policy"] == "Always" and fs["mode"] == "walk"
    assert fs["skipped_reason"] is None
    # every file, every dir (and the root), the symlink's own group
    assert fs["files_changed"] == FILES + DIRS + 1 + 1
    assert fs["files"] + fs["dirs"] == FILES + DIRS + 1 + 1
    assert 0 < fs["seconds"] < took
    assert wrong_entries(data, GID) == []
    assert os.stat("/etc/passwd").st_gid != GID
    print(f"fsGroup walk of {FILES} files: {fs['seconds']:.2f} s (mount to ready {took:.2f} s)")
    explain = d.cli("explain", "demo/walker").stdout
    assert f"fsGroup {GID} (Always): {FILES + DIRS + 2} of {FILES + DIRS + 2} entries changed" in explain

    # A second pod on the already-right volume with OnRootMismatch: no walk, not one inode touched.
    before = ctimes(data)
    d.write_manifest("p2.yaml", pod("quick", "  - name: vol\n    persistentVolumeClaim: {claimName: big}\n",
                                    policy="OnRootMismatch"))
    assert d.cli("wait", "demo/quick", "--timeout", "60").returncode == 0
    fs2 = row(d, "demo/quick", "vol")["fs_group"]
    assert fs2["policy"] == "OnRootMismatch"
    assert fs2["skipped_reason"] == "OnRootMismatch: root already matches"
    assert fs2["files_changed"] == 0 and fs2["files"] == 0
    assert fs2["seconds"] < 0.05
    assert ctimes(data) == before

    # Once per set-up, not per pass: the first pod's result stays, nothing is walked again.
    time.sleep(1.5)
    assert row(d, "demo/walker", "vol")["fs_group"] == fs
    assert ctimes(data) == before


def test_emptydir_walked_hostpath_and_read_only_never(daemon_factory, tmp_path):
    host = tmp_path / "host"
    ro = tmp_path / "ro"
    for p in (host, ro):
        p.mkdir()
        fill(str(p), 2, 3)
    before_host, before_ro = ctimes(str(host)), ctimes(str(ro))
    d = daemon_factory()
    d.write_manifest("pv.yaml", local_pv("pv-ro", str(ro), "ro"))
    d.write_manifest("p.yaml", pod("mixed", f"""\
  - name: scratch
    emptyDir: {{}}
  - name: host
    hostPath: {{path: {host}, type: Directory}}
  - name: ro
    persistentVolumeClaim: {{claimName: ro, readOnly: true}}
""", policy="OnRootMismatch"))
    assert d.cli("wait", "demo/mixed", "--timeout", "60").returncode == 0

    scratch = row(d, "demo/mixed", "scratch")
    assert scratch["fs_group"]["mode"] == "walk" and scratch["fs_group"]["skipped_reason"] is None
    st = os.stat(scratch["mount_path"])
    assert st.st_gid == GID and st.st_mode & stat.S_ISGID and stat.S_IMODE(st.st_mode) == 0o2777

    fs = row(d, "demo/mixed", "host")["fs_group"]
    assert fs["mode"] is None and fs["skipped_reason"] == "hostPath volumes never take an fsGroup"
    assert ctimes(str(host)) == before_host

    fs = row(d, "demo/mixed", "ro")["fs_group"]
    assert fs["mode"] == "walk" and fs["skipped_reason"] == "read-only volume: never walked"
    assert ctimes(str(ro)) == before_ro
    assert "no walk: read-only volume: never walked" in d.cli("explain", "demo/mixed").stdout


def test_pod_without_fs_group_has_none(daemon_factory, tmp_path):
    d = daemon_factory()
    d.write_manifest("p.yaml", pod("plain", "  - name: scratch\n    emptyDir: {}\n", fs_group=None))
    assert d.cli("wait", "demo/plain", "--timeout", "30").returncode == 0
    r = row(d, "demo/plain", "scratch")
    assert r["fs_group"] is None
    assert os.stat(r["mount_path"]).st_gid == 0


# --- CSI ----------------------------------------------------------------------------------


@pytest.fixture
def csi_loop(tmp_path):
    require_tools("losetup", "mkfs.ext4")
    with plugin_factory(tmp_path / "drivers", registration_dir=tmp_path / "plugins_registry",
                        cleanup_roots=[tmp_path]) as make:
        yield make


def csi_pv(access: str = "ReadWriteOnce", fs_type: str = "ext4") -> str:
    return f"""\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: pv-csi}}
spec:
  accessModes: [{access}]
  csi:
    driver: {DRIVER}
    volumeHandle: vol-fsg
    fsType: {fs_type}
    volumeAttributes: {{size: 32Mi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data, namespace: demo}}
spec: {{volumeName: pv-csi}}
"""


CSI_POD_VOLUMES = "  - name: vol\n    persistentVolumeClaim: {claimName: data}\n"


def _csi_daemon(daemon_factory, csi_loop, extra_args=()):
    d = daemon_factory(extra_args=["--csi-timeout", "10"])
    plugin = csi_loop(extra_args=list(extra_args))
    wait_until(lambda: any(x["name"] == DRIVER for x in d.status()["drivers"]), 15, what="driver registration")
    return d, plugin


def test_csi_volume_mount_group_is_passed_to_the_driver_and_not_walked(daemon_factory, csi_loop):
    d, plugin = _csi_daemon(daemon_factory, csi_loop, ["--volume-mount-group"])
    drv = [x for x in d.status()["drivers"] if x["name"] == DRIVER][0]
    assert "VOLUME_MOUNT_GROUP" in drv["capabilities"]
    d.write_manifest("pv.yaml", csi_pv() + "---\n" + pod("app", CSI_POD_VOLUMES))
    assert d.cli("wait", "demo/app", "--timeout", "60").returncode == 0
    stage, publish = plugin.calls("NodeStageVolume"), plugin.calls("NodePublishVolume")
    assert [c.get("volume_mount_group") for c in stage] == [str(GID)]
    assert [c.get("volume_mount_group") for c in publish] == [str(GID)]
    r = row(d, "demo/app", "vol")
    assert r["fs_group"]["mode"] == "mount_group"
    assert r["fs_group"]["skipped_reason"].startswith("applied by the driver")
    assert r["fs_group"]["files"] == 0
    st = os.stat(r["mount_path"])  # the driver applied it to the root
    assert st.st_gid == GID and st.st_mode & stat.S_ISGID
    assert os.stat(os.path.join(r["mount_path"], "lost+found")).st_gid == 0, "nobody walked the tree"


def test_csi_fs_group_policy_default_walks_and_none_does_not(daemon_factory, csi_loop):
    d, plugin = _csi_daemon(daemon_factory, csi_loop)
    # No CSIDriver object: ReadWriteOnceWithFSType, and this is an ext4 RWO volume: walked.
    d.write_manifest("pv.yaml", csi_pv() + "---\n" + pod("app", CSI_POD_VOLUMES))
    assert d.cli("wait", "demo/app", "--timeout", "60").returncode == 0
    r = row(d, "demo/app", "vol")
    assert r["fs_group"]["mode"] == "walk" and r["fs_group"]["skipped_reason"] is None
    assert all("volume_mount_group" not in c for c in plugin.calls("NodePublishVolume"))
    assert wrong_entries(r["mount_path"], GID) == []
    lost = os.path.join(r["mount_path"], "lost+found")
    os.chown(lost, -1, 0)  # a wrong entry a second pod would fix if it were walked

    # fsGroupPolicy None: a second pod on the volume gets no walk.
    d.write_manifest("driver.yaml", f"""\
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {{name: {DRIVER}}}
spec: {{attachRequired: false, fsGroupPolicy: None}}
""")
    time.sleep(0.5)  # the CSIDriver is read before the second pod appears
    d.write_manifest("p2.yaml", pod("app2", CSI_POD_VOLUMES))
    assert d.cli("wait", "demo/app2", "--timeout", "60").returncode == 0
    fs = row(d, "demo/app2", "vol")["fs_group"]
    assert fs["mode"] is None and fs["skipped_reason"] == f"CSIDriver {DRIVER} has fsGroupPolicy None"
    assert os.stat(lost).st_gid == 0
