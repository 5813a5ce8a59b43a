"""Issue 11, item 3, against the real daemon: a manifest dir that cannot be read tears nothing
down. A missing dir, a file in its place, or a dir that vanishes while the daemon runs is a
*failed* source: every mount found is kept, every emptyDir keeps its data byte for byte,
``status``/``explain`` show the source failed since T, and once the dir is back it is read
whole and nothing is lost. An empty but readable dir is a real "no pods": torn down, counted.
"""

from __future__ import annotations

import os

import pytest

from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root, sha256_of

pytestmark = [pytest.mark.timeout(120)]

PODS = "".join(f"""\
---
apiVersion: v1
kind: Pod
metadata: {{name: p{i}, namespace: demo, uid: 1111111{i}-0000-4000-8000-000000000000}}
spec:
  volumes:
  - name: mem
    emptyDir: {{medium: Memory, sizeLimit: 8Mi}}
  - name: disk
    emptyDir: {{}}
""" for i in range(2))
UIDS = [f"1111111{i}-0000-4000-8000-000000000000" for i in range(2)]


@pytest.fixture(autouse=True)
def _root():
    require_root()


def _volume(d, uid: str, name: str):
    return d.root / "pods" / uid / "volumes" / "kubernetes.io~empty-dir" / name


def _fill(d) -> dict[str, str]:
    """Write a file into every emptyDir; return path -> sha256."""
    sums = {}
    for uid in UIDS:
        for name in ("mem", "disk"):
            f = _volume(d, uid, name) / "data.bin"
            f.write_bytes(os.urandom(4096) + uid.encode() + name.encode())
            sums[str(f)] = sha256_of(f)
    return sums


def _intact(sums: dict[str, str]) -> bool:
    return all(os.path.exists(p) and sha256_of(p) == h for p, h in sums.items())


def _source(d) -> dict:
    (src,) = d.status()["sources"]
    return src


def _start_with_two_pods(daemon_factory):
    d = daemon_factory(start=False)
    d.write_manifest("pods.yaml", PODS)
    d.start()
    for i in range(2):
        assert d.cli("wait", f"demo/p{i}", "--timeout", "20").returncode == 0
    assert _source(d)["state"] == "synced"
    return d, _fill(d)


def _tmpfs(d) -> list[tuple[int, str]]:
    return sorted((m.mount_id, m.mount_point) for m in d.mounts() if m.fs_type == "tmpfs")


@pytest.mark.parametrize("variant", ["missing", "file-in-its-place"])
def test_unreadable_dir_at_start_keeps_everything_until_it_is_back(daemon_factory, tmp_path, variant):
    d, sums = _start_with_two_pods(daemon_factory)
    mounts = _tmpfs(d)
    assert len(mounts) == 2
    assert d.stop() == 0
    away = tmp_path / "manifests.away"
    os.rename(d.manifests, away)
    if variant == "file-in-its-place":
        d.manifests.write_text("not a directory\n")
    d.start()
    src = _source(d)
    assert src["state"] == "failed" and isinstance(src["since"], float)
    assert src["error"] == ("manifest directory does not exist" if variant == "missing"
                            else "manifest directory is not a directory")
    # Longer than the failed source's retry and several reconciler passes: still nothing torn down.
    wait_until(lambda: "kept 4 volumes of 2 pods found on disk" in d.log(), 10, what="the 'kept' log line")
    plan = d.cli("plan", "--json").stdout
    assert "unmount" not in plan, plan
    assert _tmpfs(d) == mounts and _intact(sums)
    explain = d.cli("explain", "demo/p0", check=False)
    first = explain.stdout.splitlines()[0]
    assert first.startswith(f"manifest-dir:{d.manifests} failed since ")
    assert first.endswith("; nothing is torn down until it is read whole")
    # The pod is known by name from the owner record: its kept volumes are shown.
    assert "to be read whole (nothing is torn down until then)" in explain.stdout, explain.stdout
    table = d.cli("status").stdout
    assert f"manifest-dir:{d.manifests} failed since" in table
    kept = [v for v in d.status()["volumes"] if not v["desired"]]
    assert len(kept) == 4 and all("to be read whole" in v["waiting_for"] for v in kept)
    by_uid = d.cli("explain", UIDS[0], check=False).stdout
    assert "to be read whole (nothing is torn down until then)" in by_uid, by_uid

    if variant == "file-in-its-place":
        d.manifests.unlink()
    os.rename(away, d.manifests)
    wait_until(lambda: _source(d)["state"] == "synced", 10, what="the source to be read whole")
    for i in range(2):
        assert d.cli("wait", f"demo/p{i}", "--timeout", "20").returncode == 0
    assert all(v["state"] == "mounted" for v in d.status()["volumes"]) and len(d.status()["volumes"]) == 4
    assert _tmpfs(d) == mounts, "the tmpfs mounts must be re-adopted, not remounted"
    assert _intact(sums)
    assert "can be read again" in d.log()


def test_dir_that_vanishes_while_running_tears_nothing_down(daemon_factory, tmp_path):
    d, sums = _start_with_two_pods(daemon_factory)
    mounts = _tmpfs(d)
    away = tmp_path / "manifests.away"
    os.rename(d.manifests, away)
    wait_until(lambda: _source(d)["state"] == "failed", 10, what="the source to be shown failed")
    src = _source(d)
    assert src["error"] == "manifest directory does not exist"
    assert all(v["state"] == "mounted" for v in d.status()["volumes"]) and len(d.status()["volumes"]) == 4
    wait_until(lambda: "cannot be read" in d.log(), 5, what="the warning")
    assert _tmpfs(d) == mounts and _intact(sums)
    os.rename(away, d.manifests)
    wait_until(lambda: _source(d)["state"] == "synced", 10, what="the source to be read whole")
    assert _tmpfs(d) == mounts and _intact(sums)
    assert all(v["state"] == "mounted" for v in d.status()["volumes"])


def test_empty_readable_dir_while_running_is_no_pods_and_is_counted(daemon_factory):
    d, _ = _start_with_two_pods(daemon_factory)
    (d.manifests / "pods.yaml").unlink()
    wait_until(lambda: not d.mounts() and not d.status()["volumes"], 20, what="the teardown")
    assert "2 pods are gone from manifest-dir:" in d.log()
    assert "4 volumes of 2 pods will be torn down" in d.log()
    assert not any(_volume(d, uid, "disk").exists() for uid in UIDS)


def test_empty_readable_dir_at_start_is_no_pods_and_is_counted(daemon_factory):
    d, _ = _start_with_two_pods(daemon_factory)
    assert d.stop() == 0
    (d.manifests / "pods.yaml").unlink()
    d.start()
    wait_until(lambda: not d.mounts() and not d.status()["volumes"], 20, what="the teardown")
    assert "4 volumes of 2 pods found on disk are not desired: they will be torn down" in d.log()
    assert _source(d)["state"] == "synced"
    assert not any(_volume(d, uid, "disk").exists() for uid in UIDS)
