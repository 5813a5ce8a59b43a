"""An on-disk emptyDir with a bind mount of a host directory inside it (someone ran
``mount --bind /srv/data <emptyDir>/sub``) is never deleted through that mount. The bind
mount is of the same filesystem, so ``st_dev`` is the same and ``os.path.ismount`` says no:
the old removal descended into it and deleted the host's files. Now the removal refuses
before deleting anything, the volume shows BUSY naming the mount, and once the mount is gone
the teardown finishes."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root
from volumemanager.plugins.fsutil import TreeRemovalRefused, remove_tree_one_filesystem

pytestmark = [pytest.mark.timeout(120)]

POD = """\
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: demo}
spec:
  volumes:
  - name: scratch
    emptyDir: {}
"""


def _bind(src, dst) -> None:
    subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)


def _umount(path) -> None:
    subprocess.run(["umount", str(path)], check=False, capture_output=True)


def test_removal_refuses_a_same_filesystem_bind_mount_and_deletes_nothing(tmp_path):
    require_root()
    host = tmp_path / "host"
    host.mkdir()
    (host / "important").write_text("the host's data")
    tree = tmp_path / "emptydir"
    (tree / "a" / "sub").mkdir(parents=True)
    (tree / "own.txt").write_text("the pod's scratch")
    assert os.stat(host).st_dev == os.stat(tree).st_dev, "the point is a bind mount of the same filesystem"
    _bind(host, tree / "a" / "sub")
    try:
        with pytest.raises(TreeRemovalRefused) as info:
            remove_tree_one_filesystem(str(tree))
        assert info.value.filename == str(tree / "a" / "sub")
        assert (host / "important").read_text() == "the host's data"
        assert (tree / "own.txt").exists(), "nothing is deleted when a mount is below"
    finally:
        _umount(tree / "a" / "sub")
    remove_tree_one_filesystem(str(tree))
    assert not tree.exists() and (host / "important").read_text() == "the host's data"


def test_the_daemon_keeps_an_emptydir_with_a_bind_mount_inside_and_the_host_data(daemon_factory, tmp_path):
    require_root()
    host = tmp_path / "hostdata"
    host.mkdir()
    (host / "important").write_text("the host's data")
    d = daemon_factory(start=False)
    d.write_manifest("p.yaml", POD)
    d.start()
    assert d.cli("wait", "demo/p", "--timeout", "20").returncode == 0
    (row,) = d.status()["volumes"]
    sub = os.path.join(row["mount_path"], "sub")
    os.mkdir(sub)
    _bind(host, sub)
    try:
        (d.manifests / "p.yaml").unlink()

        def busy():
            rows = d.status()["volumes"]
            return rows and rows[0]["error_code"] == "BUSY" and rows[0]
        r = wait_until(busy, 20, 0.1, "the teardown to be refused")
        assert sub in r["last_error"], r["last_error"]
        assert (host / "important").read_text() == "the host's data"
    finally:
        _umount(sub)
    wait_until(lambda: not d.status()["volumes"], 30, 0.2, "the teardown to finish once the mount is gone")
    assert not os.path.exists(row["mount_path"])
    assert (host / "important").read_text() == "the host's data"
