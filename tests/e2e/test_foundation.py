"""Issue 2, end to end: the daemon on a temporary root dir, real tmpfs and bind mounts."""

from __future__ import annotations

import os

import pytest

from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root

pytestmark = [pytest.mark.timeout(90)]

POD = """\
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: demo}}
spec:
  volumes:
  - name: cache
    emptyDir: {{medium: Memory, sizeLimit: 64Mi}}
  - name: scratch
    emptyDir: {{}}
  - name: data
    hostPath: {{path: {host}, type: DirectoryOrCreate}}
"""


@pytest.fixture(autouse=True)
def _root():
    require_root()


def test_pod_volumes_mount_survive_broken_yaml_and_go_away(daemon, tmp_path):
    host = tmp_path / "host-data"
    path = daemon.write_manifest("web.yaml", POD.format(host=host))
    assert daemon.cli("wait", "demo/web", "--timeout", "20").returncode == 0
    st = daemon.status()
    assert st["source"] == "daemon"
    rows = {v["volume"]: v for v in st["volumes"]}
    assert {k: v["state"] for k, v in rows.items()} == {"cache": "mounted", "scratch": "mounted", "data": "mounted"}
    uid = rows["cache"]["pod_uid"]
    cache = daemon.root / "pods" / uid / "volumes" / "kubernetes.io~empty-dir" / "cache"
    by_path = {m.mount_point: m for m in daemon.mounts()}
    assert by_path[str(cache)].fs_type == "tmpfs"
    assert "size=65536k" in by_path[str(cache)].super_options
    data_path = daemon.root / "pods" / uid / "volumes" / "kubernetes.io~host-path" / "data"
    assert str(data_path) in by_path
    (data_path / "kept.txt").write_text("host data")
    (daemon.root / "pods" / uid / "volumes" / "kubernetes.io~empty-dir" / "scratch" / "tmp.txt").write_text("x")
    before = sorted((m.mount_id, m.mount_point) for m in daemon.mounts())

    # A half-written file changes no mount, and the error names the file.
    path.write_text("kind: Pod\nmetadata: {name: web\n  namespace: [\n")
    st = wait_until(lambda: (s := daemon.status())["manifest_errors"] and s, what="the manifest error")
    assert any(e["file"] == "web.yaml" for e in st["manifest_errors"])
    assert all(v["state"] == "mounted" for v in st["volumes"])
    assert sorted((m.mount_id, m.mount_point) for m in daemon.mounts()) == before

    # Removing the file unmounts everything and removes the directories; host data stays.
    path.unlink()
    wait_until(lambda: not daemon.mounts(), what="all mounts under the root dir to go")
    wait_until(lambda: not daemon.status()["volumes"], what="status to show no volumes")
    assert not (daemon.root / "pods" / uid).exists()
    assert (host / "kept.txt").read_text() == "host data"


def test_missing_claim_waits_with_reason_and_explain(daemon):
    daemon.write_manifest("p.yaml", """\
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: demo}
spec:
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: missing}
""")
    wait_until(lambda: daemon.states("demo/db").get("data") == "waiting", what="waiting state")
    r = daemon.cli("explain", "demo/db", check=False)
    assert r.returncode == 1
    assert "persistentvolumeclaim demo/missing not found" in r.stdout
    r = daemon.cli("explain", "demo/nope", check=False)
    assert r.returncode == 2
    r = daemon.cli("wait", "demo/db", "--timeout", "0.5", check=False)
    assert r.returncode == 1 and "persistentvolumeclaim demo/missing not found" in r.stdout


def test_claim_bound_to_hostpath_pv_then_unbound(daemon, tmp_path):
    host = tmp_path / "pvdata"
    host.mkdir()
    daemon.write_manifest("pv.yaml", f"""\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: pv1}}
spec:
  hostPath: {{path: {host}, type: Directory}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: claim1, namespace: demo}}
spec: {{volumeName: pv1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: app, namespace: demo}}
spec:
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: claim1, readOnly: true}}
""")
    assert daemon.cli("wait", "demo/app", "--timeout", "20").returncode == 0
    row = [v for v in daemon.status()["volumes"] if v["pod"] == "demo/app"][0]
    mi = {m.mount_point: m for m in daemon.mounts()}[row["mount_path"]]
    assert mi.read_only
    with pytest.raises(OSError):
        open(os.path.join(row["mount_path"], "f"), "w")


def test_hostile_names_refused_and_touch_nothing(daemon):
    daemon.write_manifest("bad.yaml", """\
apiVersion: v1
kind: Pod
metadata: {name: "../../etc", namespace: demo}
spec:
  volumes:
  - name: x
    emptyDir: {}
""")
    st = wait_until(lambda: (s := daemon.status())["manifest_errors"] and s, what="the manifest error")
    err = st["manifest_errors"][0]
    assert err["file"] == "bad.yaml" and "metadata.name" in (err["field"] or "")
    assert not (daemon.root / "pods").exists() or not any((daemon.root / "pods").iterdir())
    assert not daemon.mounts()


def test_offline_status_reads_disk(daemon_factory, tmp_path):
    d = daemon_factory()
    d.write_manifest("web.yaml", POD.format(host=tmp_path / "h"))
    assert d.cli("wait", "demo/web", "--timeout", "20").returncode == 0
    assert d.stop() == 0
    assert len(d.mounts()) == 2, "stopping the daemon must not unmount"
    import json

    st = json.loads(d.cli("status", "--json", "--manifest-dir", str(d.manifests)).stdout)
    assert st["source"] == "disk"
    assert {v["volume"]: v["state"] for v in st["volumes"]} == {"cache": "mounted", "scratch": "mounted",
                                                                "data": "mounted"}
    assert st["orphans"] == []
    # With the manifest gone, the same mounts are orphans.
    (d.manifests / "web.yaml").unlink()
    st = json.loads(d.cli("status", "--json", "--manifest-dir", str(d.manifests)).stdout)
    assert st["volumes"] == [] and len(st["orphans"]) == 2
