"""Issue 11, item 4, against the real daemon: one claim per PV, one pod per UID.

Two claims naming one PV: exactly one pod gets it (claimRef, else the claim already holding
it, else the oldest), the other waits with "persistentvolume X is bound to ns/claim", in
whatever order the documents come. Two pods with one UID: the pod holding it keeps it and
its data, the newcomer is refused (a manifest error naming both) and never inherits the
other's emptyDir or tmpfs.
"""

from __future__ import annotations

import os

import pytest

from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root, sha256_of

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def _root():
    require_root()


def pv(name: str, path, claim_ref: str | None = None) -> str:
    ref = ""
    if claim_ref:
        ns, n = claim_ref.split("/")
        ref = f"  claimRef: {{namespace: {ns}, name: {n}}}\n"
    return (f"---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {name}}}\nspec:\n"
            f"  accessModes: [ReadWriteOnce]\n  hostPath: {{path: {path}, type: DirectoryOrCreate}}\n{ref}")


def pvc(name: str, volume: str, created: str) -> str:
    return (f"---\napiVersion: v1\nkind: PersistentVolumeClaim\n"
            f"metadata: {{name: {name}, namespace: demo, creationTimestamp: '{created}'}}\n"
            f"spec: {{volumeName: {volume}, accessModes: [ReadWriteOnce]}}\n")


def pod(name: str, claim: str) -> str:
    return (f"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n"
            f"  volumes:\n  - name: data\n    persistentVolumeClaim: {{claimName: {claim}}}\n")


def _row(d, pod_key: str) -> dict:
    (row,) = [v for v in d.status()["volumes"] if v["pod"] == pod_key]
    return row


OLD, YOUNG = "2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"


@pytest.mark.parametrize("files", [("a.yaml", "b.yaml"), ("b.yaml", "a.yaml")])
def test_two_claims_on_one_pv_exactly_one_pod_mounts_in_either_order(daemon_factory, tmp_path, files):
    d = daemon_factory(start=False)
    path = tmp_path / "pv1"
    d.write_manifest("pv.yaml", pv("pv1", path))
    d.write_manifest(files[0], pvc("old", "pv1", OLD) + pod("p-old", "old"))
    d.write_manifest(files[1], pvc("young", "pv1", YOUNG) + pod("p-young", "young"))
    d.start()
    assert d.cli("wait", "demo/p-old", "--timeout", "20").returncode == 0
    young = _row(d, "demo/p-young")
    assert young["state"] == "waiting"
    assert young["reason"] == "persistentvolume pv1 is bound to demo/old"
    assert young["waiting_for"] == "persistentvolume pv1 to be released by demo/old"
    explain = d.cli("explain", "demo/p-young", check=False)
    assert explain.returncode == 1 and "persistentvolume pv1 is bound to demo/old" in explain.stdout
    assert len(d.mounts()) == 1, "exactly one pod may have the PV mounted"
    assert d.status()["manifest_errors"] == []


def test_the_claim_holding_the_pv_keeps_it_then_hands_it_over(daemon_factory, tmp_path):
    d = daemon_factory(start=False)
    path = tmp_path / "pv1"
    d.write_manifest("pv.yaml", pv("pv1", path))
    d.write_manifest("young.yaml", pvc("young", "pv1", YOUNG) + pod("p-young", "young"))
    d.start()
    assert d.cli("wait", "demo/p-young", "--timeout", "20").returncode == 0
    (mount,) = d.mounts()
    (path / "kept.txt").write_text("young's data")
    # An older claim for the same PV, with its pod: the claim already holding it keeps it.
    d.write_manifest("old.yaml", pvc("old", "pv1", OLD) + pod("p-old", "old"))
    wait_until(lambda: any(v["pod"] == "demo/p-old" for v in d.status()["volumes"]), 10, what="p-old")
    assert _row(d, "demo/p-old")["reason"] == "persistentvolume pv1 is bound to demo/young"
    assert [(m.mount_id, m.mount_point) for m in d.mounts()] == [(mount.mount_id, mount.mount_point)]
    # The holder's pod goes: once its mount is torn down, the other claim gets the PV.
    d.write_manifest("young.yaml", pvc("young", "pv1", YOUNG))
    assert d.cli("wait", "demo/p-old", "--timeout", "20").returncode == 0
    (now,) = d.mounts()
    assert now.mount_point == _row(d, "demo/p-old")["mount_path"]
    assert (path / "kept.txt").read_text() == "young's data"


def test_claim_ref_decides_over_age(daemon_factory, tmp_path):
    d = daemon_factory(start=False)
    d.write_manifest("pv.yaml", pv("pv1", tmp_path / "pv1", claim_ref="demo/young"))
    d.write_manifest("a.yaml", pvc("old", "pv1", OLD) + pod("p-old", "old"))
    d.write_manifest("b.yaml", pvc("young", "pv1", YOUNG) + pod("p-young", "young"))
    d.start()
    assert d.cli("wait", "demo/p-young", "--timeout", "20").returncode == 0
    assert _row(d, "demo/p-old")["reason"] == "persistentvolume pv1 is bound to demo/young (its claimRef), not demo/old"
    assert len(d.mounts()) == 1


# --- one pod per UID ------------------------------------------------------------------------

UID = "22222222-0000-4000-8000-000000000000"


def uid_pod(name: str) -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: demo, uid: {UID}}}
spec:
  volumes:
  - name: mem
    emptyDir: {{medium: Memory, sizeLimit: 8Mi}}
  - name: disk
    emptyDir: {{}}
"""


def _vol(d, name: str):
    return d.root / "pods" / UID / "volumes" / "kubernetes.io~empty-dir" / name


def _fill(d) -> dict[str, str]:
    sums = {}
    for name in ("mem", "disk"):
        f = _vol(d, name) / "data.bin"
        f.write_bytes(os.urandom(4096) + name.encode())
        sums[str(f)] = sha256_of(f)
    return sums


def _intact(sums: dict[str, str]) -> bool:
    return all(os.path.exists(p) and sha256_of(p) == h for p, h in sums.items())


def _uid_errors(d) -> list[dict]:
    return [e for e in d.status()["manifest_errors"] if e["field"] == "metadata.uid"]


def _mounts(d) -> list[tuple[int, str]]:
    return sorted((m.mount_id, m.mount_point) for m in d.mounts())


def test_same_uid_documents_swapped_between_files_the_first_keeps_everything(daemon_factory):
    d = daemon_factory(start=False)
    d.write_manifest("a.yaml", uid_pod("first"))
    d.start()
    assert d.cli("wait", "demo/first", "--timeout", "20").returncode == 0
    sums, mounts = _fill(d), _mounts(d)
    # A second pod with the same UID, in a file that sorts *after*: refused.
    d.write_manifest("b.yaml", uid_pod("second"))
    wait_until(lambda: _uid_errors(d), 10, what="the duplicate UID error")
    # Swap the documents between the files: "second" now sorts first. The holder keeps it.
    d.write_manifest("b.yaml", uid_pod("first"))
    d.write_manifest("a.yaml", uid_pod("second"))
    wait_until(lambda: [e["file"] for e in _uid_errors(d)] == ["a.yaml"], 10, what="the error to follow the file")
    (error,) = _uid_errors(d)
    assert "'demo/first'" in error["message"] and "'demo/second'" in error["message"]
    assert d.cli("explain", "demo/second", check=False).returncode == 2
    assert {v["pod"] for v in d.status()["volumes"]} == {"demo/first"}
    assert all(v["state"] == "mounted" for v in d.status()["volumes"])
    assert _mounts(d) == mounts and _intact(sums)


def test_a_new_pod_with_the_uid_of_a_deleted_one_inherits_nothing(daemon_factory):
    d = daemon_factory(start=False)
    d.write_manifest("a.yaml", uid_pod("first"))
    d.start()
    assert d.cli("wait", "demo/first", "--timeout", "20").returncode == 0
    _fill(d)
    # One change: the document of "first" is replaced by one of "second" with the same UID.
    d.write_manifest("a.yaml", uid_pod("second"))
    assert d.cli("wait", "demo/second", "--timeout", "30").returncode == 0
    assert "is still in use on this node by pod demo/first" in d.log()
    # Its emptyDirs are new: nothing of first's data.
    assert not (_vol(d, "mem") / "data.bin").exists() and not (_vol(d, "disk") / "data.bin").exists()
    assert {v["pod"] for v in d.status()["volumes"]} == {"demo/second"}


def test_documents_swapped_while_the_daemon_is_down_the_first_keeps_everything(daemon_factory):
    d = daemon_factory(start=False)
    d.write_manifest("a.yaml", uid_pod("first"))
    d.start()
    assert d.cli("wait", "demo/first", "--timeout", "20").returncode == 0
    sums, mounts = _fill(d), _mounts(d)
    d.write_manifest("b.yaml", uid_pod("second"))
    wait_until(lambda: _uid_errors(d), 10, what="the duplicate UID error")
    assert d.stop() == 0
    # While it is down the documents are swapped: "second" now sorts first.
    d.write_manifest("a.yaml", uid_pod("second"))
    d.write_manifest("b.yaml", uid_pod("first"))
    d.start()
    assert d.cli("wait", "demo/first", "--timeout", "20").returncode == 0
    (error,) = _uid_errors(d)
    assert error["file"] == "a.yaml" and "'demo/second' ignored" in error["message"]
    assert {v["pod"] for v in d.status()["volumes"]} == {"demo/first"}
    assert _mounts(d) == mounts and _intact(sums)


def test_a_pod_given_a_deleted_pods_uid_while_the_daemon_is_down_inherits_nothing(daemon_factory):
    d = daemon_factory(start=False)
    d.write_manifest("a.yaml", uid_pod("first"))
    d.start()
    assert d.cli("wait", "demo/first", "--timeout", "20").returncode == 0
    _fill(d)
    assert d.stop() == 0
    d.write_manifest("a.yaml", uid_pod("second"))
    d.start()
    assert d.cli("wait", "demo/second", "--timeout", "30").returncode == 0
    assert "is still in use on this node by pod demo/first" in d.log()
    assert not (_vol(d, "mem") / "data.bin").exists() and not (_vol(d, "disk") / "data.bin").exists()
    assert {v["pod"] for v in d.status()["volumes"]} == {"demo/second"}
