"""Issue 5 (hostile input): symlinks planted under the root dir, the admin socket's peers,
plan doing nothing."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest

from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root
from volumemanager.manifests.models import derived_pod_uid

pytestmark = [pytest.mark.timeout(60)]

POD = """\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo}
spec:
  volumes:
  - name: cache
    emptyDir: {medium: Memory}
"""


@pytest.fixture(autouse=True)
def _root():
    require_root()


def test_symlinked_pod_dir_is_refused_not_followed(daemon, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pods = daemon.root / "pods"
    pods.mkdir(parents=True, exist_ok=True)
    os.symlink(elsewhere, pods / derived_pod_uid("demo", "web"))
    daemon.write_manifest("web.yaml", POD)
    wait_until(lambda: daemon.states("demo/web").get("cache") == "error", 15, what="the refusal")
    row = daemon.status()["volumes"][0]
    assert "symlink" in row["last_error"]
    assert list(elsewhere.iterdir()) == [], "nothing may be created through the symlink"
    assert not daemon.mounts()


@pytest.fixture
def public_socket_dir():
    """A directory any user can traverse (pytest's tmp dirs are 0700)."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="vm-test-", dir="/run")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_admin_socket_is_0600_and_refuses_other_users(daemon_factory, public_socket_dir):
    from pathlib import Path

    daemon = daemon_factory(start=False)
    daemon.socket = Path(public_socket_dir) / "vm.sock"
    daemon.start()
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o600
    os.chmod(daemon.socket, 0o666)  # even if someone loosens the mode, SO_PEERCRED refuses
    pid = os.fork()
    if pid == 0:  # child: become nobody and ask
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            # Many times: the server once denied before reading, and a client still sending
            # then got EPIPE/ECONNRESET about one run in three. It reads first now.
            for _ in range(50):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(5)
                    s.connect(str(daemon.socket))
                    s.sendall(b'{"method": "status"}\n')
                    resp = json.loads(s.makefile().readline())
                if resp["ok"] or "permission denied" not in resp["error"] or resp.get("code") != "permission_denied":
                    code = 3
                    break
            else:
                code = 0
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_plan_shows_and_does_nothing(daemon):
    r = daemon.cli("plan")
    assert "nothing to do" in r.stdout
    daemon.write_manifest("web.yaml", POD)
    assert daemon.cli("wait", "demo/web", "--timeout", "15").returncode == 0
    before = [m.mount_id for m in daemon.mounts()]
    (daemon.manifests / "web.yaml").unlink()
    r = daemon.cli("plan", "--json")
    plan = json.loads(r.stdout)
    # Either the unmount is already under way or it is planned; plan itself never acts.
    assert all(p["action"] in ("unmount_volume", "unmount_device") for p in plan)
    wait_until(lambda: not daemon.mounts(), what="the unmount by the reconciler")
    del before
