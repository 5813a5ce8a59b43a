"""Issue 16, item 1, end to end: a pod's many quick-lane volumes are mounted and torn down in
batches (one log line per batch), and one volume that cannot be set up fails alone, with its
own error in status and explain, on real tmpfs mounts."""

from __future__ import annotations

import re

import pytest

from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root

pytestmark = [pytest.mark.timeout(90)]

UID = "b0000000-0000-0000-0000-000000000001"
N = 40


def pod(n: int) -> str:
    vols = "".join(f"  - name: v{i:02d}\n    emptyDir: {{medium: Memory}}\n" for i in range(n))
    return (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: many, namespace: batch, uid: {UID}}}\n"
            f"spec:\n  volumes:\n{vols}")


@pytest.fixture(autouse=True)
def _root():
    require_root()


def test_a_pods_volumes_mount_in_batches_and_a_broken_one_fails_alone(daemon):
    # A file where one volume's directory must go: its set-up fails; its batch-mates do not.
    blocked = daemon.root / "pods" / UID / "volumes" / "kubernetes.io~empty-dir" / "v13"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("in the way")
    daemon.write_manifest("many.yaml", pod(N))

    def settled():
        rows = [v for v in daemon.status()["volumes"] if v["pod"] == "batch/many"]
        return rows if len(rows) == N and sum(r["state"] == "mounted" for r in rows) == N - 1 else None

    rows = {r["volume"]: r for r in wait_until(settled, 30, 0.2, "39 of 40 volumes mounted")}
    bad = rows["v13"]
    assert bad["state"] != "mounted" and bad["error_code"] == "MKDIR_FAILED", bad
    assert all(r["last_error"] is None for name, r in rows.items() if name != "v13")
    mounted = {m.mount_point for m in daemon.mounts() if m.fs_type == "tmpfs"}
    assert len(mounted) == N - 1 and str(blocked) not in mounted
    explain = daemon.cli("explain", "batch/many", check=False).stdout
    assert "v13" in explain and "MKDIR_FAILED" in explain, explain

    # One summary line per batch (each volume's line is at debug), one warning for the failure.
    log = daemon.log()
    batches = [int(n) for n in re.findall(r"mount_volume succeeded for (\d+) volumes", log)]
    assert batches and sum(batches) >= N - 1 and max(batches) > 1, log[-3000:]
    assert "mount_volume failed for kubernetes.io/empty-dir/" + UID + "-v13" in log

    # Fixed by the operator: the retry (with its backoff) mounts it; then the pod goes, in batches.
    blocked.unlink()
    wait_until(lambda: daemon.states("batch/many").get("v13") == "mounted", 30, 0.2, "v13 mounted on retry")
    (daemon.manifests / "many.yaml").unlink()
    wait_until(lambda: not daemon.mounts(), 30, 0.1, "every volume torn down")
    assert re.search(r"unmount_volume succeeded for \d+ volumes", daemon.log())
    assert not (daemon.root / "pods" / UID).exists()
