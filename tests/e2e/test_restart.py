"""Issue 5 (part): a restart adopts what is mounted without a single mount or unmount, and
cleans up what stopped being desired while the daemon was down."""

from __future__ import annotations

import pytest

from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root

pytestmark = [pytest.mark.timeout(120)]

PODS = "".join(f"""\
---
apiVersion: v1
kind: Pod
metadata: {{name: p{i}, namespace: demo}}
spec:
  volumes:
  - name: mem
    emptyDir: {{medium: Memory, sizeLimit: 8Mi}}
  - name: host
    hostPath: {{path: {{host}}/p{i}, type: DirectoryOrCreate}}
""" for i in range(5))


@pytest.fixture(autouse=True)
def _root():
    require_root()


def test_restart_issues_no_mount_and_cleans_what_went_away(daemon_factory, tmp_path):
    d = daemon_factory(start=False)
    d.write_manifest("pods.yaml", PODS.replace("{host}", str(tmp_path / "h")))
    d.start()
    for i in range(5):
        assert d.cli("wait", f"demo/p{i}", "--timeout", "20").returncode == 0
    before = sorted((m.mount_id, m.mount_point) for m in d.mounts())
    assert len(before) == 10
    assert d.stop() == 0
    assert sorted((m.mount_id, m.mount_point) for m in d.mounts()) == before

    d.start()
    st = d.status()
    assert all(v["state"] == "mounted" for v in st["volumes"]) and len(st["volumes"]) == 10
    assert sorted((m.mount_id, m.mount_point) for m in d.mounts()) == before, "a restart must not remount"
    assert d.stop() == 0

    # Pods removed while the daemon is down are torn down after it starts again.
    d.write_manifest("pods.yaml", PODS.replace("{host}", str(tmp_path / "h")).split("---\n", 2)[0] + "---\n"
                     + PODS.replace("{host}", str(tmp_path / "h")).split("---\n")[1])
    d.start()
    wait_until(lambda: len(d.mounts()) == 2, 20, what="the four removed pods' mounts to go")
    kept = {mp for _, mp in before}
    assert {m.mount_point for m in d.mounts()} <= kept
    assert all(v["state"] == "mounted" for v in d.status()["volumes"])


def test_mount_removed_by_hand_is_reestablished(daemon_factory, tmp_path):
    from mount_utils import syscalls as sc

    d = daemon_factory(start=False)
    d.write_manifest("pods.yaml", PODS.replace("{host}", str(tmp_path / "h")))
    d.start()
    assert d.cli("wait", "demo/p0", "--timeout", "20").returncode == 0
    victim = [m for m in d.mounts() if m.fs_type == "tmpfs"][0]
    sc.sys_umount(victim.mount_point, 0)
    # (The kernel may hand the new mount the old mount ID, so look for the log line too.)
    wait_until(lambda: "vanished" in d.log() and any(m.mount_point == victim.mount_point for m in d.mounts()),
               10, what="the mount to be re-established")
    wait_until(lambda: all(v["state"] == "mounted" for v in d.status()["volumes"]), what="all mounted")
