"""One daemon per root dir. A second daemon started on a live node's root dir with another
socket and another manifest dir (an ordinary mistake: a second config, a mistyped
``--socket``) used to read the first one's volumes as "found on disk, not desired" and tear
them down, deleting every on-disk emptyDir. Now it refuses to start (exit 1, one line naming
the holder's pid) before it reads or changes anything; the lock dies with its process, so a
restart after SIGKILL starts normally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.fixtures_mounts import require_root, sha256_of

pytestmark = [pytest.mark.timeout(120)]

POD = """\
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: demo}
spec:
  volumes:
  - name: disk
    emptyDir: {}
  - name: mem
    emptyDir: {medium: Memory, sizeLimit: 4Mi}
"""


def _second_daemon(d, tmp_path) -> subprocess.CompletedProcess:
    other = tmp_path / "other-manifests"
    other.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "volumemanager", "daemon", "--root-dir", str(d.root),
           "--socket", str(tmp_path / "second.sock"), "--manifest-dir", str(other),
           "--metrics-address", "", "--node-name", "second"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_a_second_daemon_on_a_live_root_dir_refuses_to_start_and_touches_nothing(daemon_factory, tmp_path):
    require_root()
    d = daemon_factory(start=False)
    d.write_manifest("p.yaml", POD)
    d.start()
    assert d.cli("wait", "demo/p", "--timeout", "20").returncode == 0
    (row,) = [v for v in d.status()["volumes"] if v["volume"] == "disk"]
    data = os.path.join(row["mount_path"], "data.bin")
    with open(data, "wb") as f:
        f.write(os.urandom(65536))
    before = sha256_of(data)
    mounts = sorted((m.mount_id, m.mount_point) for m in d.mounts())

    r = _second_daemon(d, tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.strip() == (
        f"volumemanager: root dir {d.root} is in use by another volumemanager daemon (pid {d.proc.pid} holds "
        f"{d.root}/state/daemon.lock); one daemon per root dir: stop it first, or give this one its own --root-dir")
    assert not (tmp_path / "second.sock").exists()
    assert sha256_of(data) == before
    assert sorted((m.mount_id, m.mount_point) for m in d.mounts()) == mounts
    assert all(v["state"] == "mounted" for v in d.status()["volumes"])

    # The lock dies with its holder: a restart after SIGKILL adopts everything.
    d.kill()
    d.start()
    assert d.cli("wait", "demo/p", "--timeout", "20").returncode == 0
    assert sorted((m.mount_id, m.mount_point) for m in d.mounts()) == mounts
    assert sha256_of(data) == before
    # And after a clean stop a daemon on the same root dir starts too.
    assert d.stop() == 0
    d.start()
    assert d.cli("wait", "demo/p", "--timeout", "20").returncode == 0
