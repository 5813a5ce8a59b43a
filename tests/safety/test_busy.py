"""Issue 11, items 6-7, against the real daemon: a busy volume is explained and never destroyed;
a torn-down pod leaves no directories behind, also across a restart."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root

pytestmark = [pytest.mark.timeout(120)]

EMPTY_DIR_POD = """\
apiVersion: v1
kind: Pod
metadata: {{name: busy, namespace: demo}}
spec:
  volumes:
  - name: scratch
    emptyDir: {{{medium}}}
"""

LOCAL_PV = """\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: pv-dir}}
spec:
  capacity: {{storage: 1Gi}}
  volumeMode: Filesystem
  accessModes: [ReadWriteOnce]
  local: {{path: {path}}}
  claimRef: {{namespace: demo, name: files}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: files, namespace: demo}}
spec:
  volumeName: pv-dir
  accessModes: [ReadWriteOnce]
"""

LOCAL_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: files, namespace: demo}
spec:
  volumes:
  - name: files
    persistentVolumeClaim: {claimName: files}
"""

KEEP_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: keep, namespace: demo}
spec:
  volumes:
  - name: scratch
    emptyDir: {}
"""


@pytest.fixture(autouse=True)
def _root():
    require_root()


@pytest.fixture
def holders():
    """Start holder processes; each is killed by its PID at teardown (before the daemon's
    fixture unmounts what is left, which a holder would keep busy)."""
    started: list[subprocess.Popen] = []

    def start(cwd: Path, open_file: Path) -> subprocess.Popen:
        with open(open_file, "rb") as fh:
            p = subprocess.Popen(["sleep", "300"], cwd=cwd, stdin=fh)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(5)


def _digest_tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _fill(vol: Path) -> dict[str, str]:
    (vol / "work").mkdir()
    (vol / "data.bin").write_bytes(os.urandom(256 * 1024))
    (vol / "work" / "notes.txt").write_text("keep me\n" * 100)
    return _digest_tree(vol)


def _row(daemon, pod: str, volume: str) -> dict | None:
    for v in daemon.status()["volumes"]:
        if v["pod"] == pod and v["volume"] == volume:
            return v
    return None


def _pod_rows(daemon, uid: str) -> list[dict]:
    return [v for v in daemon.status()["volumes"] if v["pod_uid"] == uid]


@pytest.mark.parametrize("medium", ["", "medium: Memory, sizeLimit: 16Mi"], ids=["disk", "memory"])
def test_busy_empty_dir_is_kept_explained_and_removed_once_free(daemon, holders, medium):
    path = daemon.write_manifest("busy.yaml", EMPTY_DIR_POD.format(medium=medium))
    assert daemon.cli("wait", "demo/busy", "--timeout", "20").returncode == 0
    uid = _row(daemon, "demo/busy", "scratch")["pod_uid"]
    pod_dir = daemon.root / "pods" / uid
    vol = pod_dir / "volumes" / "kubernetes.io~empty-dir" / "scratch"
    before = _digest_tree(vol) | _fill(vol)
    holder = holders(vol / "work", vol / "data.bin")

    path.unlink()
    row = wait_until(lambda: (r := _row(daemon, "demo/busy", "scratch")) and r.get("holders") and r,
                     timeout=30, what=f"status to name the holder (log: {daemon.log(3000)})")
    assert row["desired"] is False and row["error_code"] == "BUSY"
    by_pid = {h["pid"]: h for h in row["holders"]}
    assert by_pid[holder.pid]["command"] == "sleep"
    assert f"cwd {vol / 'work'}" in by_pid[holder.pid]["holds"]
    assert f"open file {vol / 'data.bin'}" in by_pid[holder.pid]["holds"]
    assert row["next_retry_seconds"] is not None or row["in_progress"]

    r = daemon.cli("explain", "demo/busy", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not desired any more" in r.stdout
    assert f"busy: held by pid {holder.pid} (sleep): cwd {vol / 'work'}" in r.stdout
    by_uid = daemon.cli("explain", uid, "--json", check=False)
    assert by_uid.returncode == 1
    assert json.loads(by_uid.stdout)["volumes"][0]["row"]["holders"][0]["pid"] == holder.pid

    # Retried with backoff, never forced: the data stays byte for byte while it is held.
    wait_until(lambda: "failed" in daemon.log() and daemon.log().count("BUSY") >= 2, timeout=30,
               what="a retry of the busy tear-down")
    assert _digest_tree(vol) == before
    if medium:
        assert any(m.mount_point == str(vol) for m in daemon.mounts())  # never a lazy unmount

    holder.kill()
    holder.wait(5)
    wait_until(lambda: not pod_dir.exists(), timeout=60, what=f"{pod_dir} to go (log: {daemon.log(3000)})")
    assert not _pod_rows(daemon, uid)
    assert not daemon.mounts()
    assert daemon.cli("explain", "demo/busy", check=False).returncode == 2
    assert daemon.cli("explain", uid, check=False).returncode == 2


def test_local_pv_pod_leaves_no_skeleton_also_across_a_restart(daemon_factory, tmp_path):
    pv_dir = tmp_path / "pv-dir"
    pv_dir.mkdir()
    (pv_dir / "kept.txt").write_text("local PV data")
    d = daemon_factory(start=False)
    d.write_manifest("pv.yaml", LOCAL_PV.format(path=pv_dir))
    pod_file = d.write_manifest("files.yaml", LOCAL_POD)
    d.write_manifest("keep.yaml", KEEP_POD)
    d.start()
    assert d.cli("wait", "demo/files", "--timeout", "20").returncode == 0
    assert d.cli("wait", "demo/keep", "--timeout", "20").returncode == 0
    row = _row(d, "demo/files", "files")
    uid, mount_path = row["pod_uid"], Path(row["mount_path"])
    keep_uid = _row(d, "demo/keep", "scratch")["pod_uid"]
    pod_dir = d.root / "pods" / uid
    assert mount_path.parent == pod_dir / "volumes" / "kubernetes.io~local-volume"
    assert (mount_path / "kept.txt").read_text() == "local PV data"

    pod_file.unlink()
    wait_until(lambda: not pod_dir.exists(), timeout=30, what=f"{pod_dir} to go (log: {d.log(3000)})")
    assert (pv_dir / "kept.txt").read_text() == "local PV data"
    assert d.stop() == 0

    # Skeletons left by an earlier run (no volume inside), and one with a file: only the
    # empty directories go, after the desired state has been read; a desired pod keeps its own.
    pods = d.root / "pods"
    empty_uids = [str(uuid.uuid4()) for _ in range(2)]
    (pods / empty_uids[0] / "volumes" / "x").mkdir(parents=True)
    (pods / empty_uids[1] / "volumes" / "kubernetes.io~local-volume").mkdir(parents=True)
    (pods / empty_uids[1] / "volumeDevices" / "kubernetes.io~local-volume").mkdir(parents=True)
    not_empty = pods / str(uuid.uuid4())
    (not_empty / "volumes" / "y").mkdir(parents=True)
    (not_empty / "etc-hosts").write_text("127.0.0.1 localhost\n")
    d.start()
    wait_until(lambda: not any((pods / u).exists() for u in empty_uids), timeout=30,
               what=f"the leftover skeletons to go (log: {d.log(3000)})")
    assert (not_empty / "etc-hosts").read_text() == "127.0.0.1 localhost\n"
    assert not (not_empty / "volumes").exists()
    assert (pods / keep_uid / "volumes" / "kubernetes.io~empty-dir" / "scratch").is_dir()
    assert d.states("demo/keep") == {"scratch": "mounted"}
    (not_empty / "etc-hosts").unlink()
    not_empty.rmdir()
    (d.manifests / "keep.yaml").unlink()
    wait_until(lambda: not (pods / keep_uid).exists(), timeout=30, what="the kept pod's dir to go")
    assert d.stop() == 0
