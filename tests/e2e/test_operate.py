"""Issue 6, end to end: sd_notify on a real socket, metrics scraped over HTTP, explain/wait."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root

pytestmark = [pytest.mark.timeout(90)]

EMPTYDIR_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo}
spec:
  volumes:
  - name: cache
    emptyDir: {medium: Memory, sizeLimit: 16Mi}
"""


@pytest.fixture(autouse=True)
def _root():
    require_root()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_notify_ready_watchdog_and_stopping_with_mounts_kept(daemon_factory, tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(sock_path)
    rx.settimeout(0.2)
    messages: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                messages.append(rx.recv(4096).decode())
            except socket.timeout:
                return messages

    try:
        d = daemon_factory(start=False, env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"})
        d.write_manifest("web.yaml", EMPTYDIR_POD)
        d.start()
        wait_until(lambda: any("READY=1" in m for m in drain()), what="READY=1")
        wait_until(lambda: sum("WATCHDOG=1" in m for m in drain()) >= 3, 5, what="watchdog pings")
        assert any("STATUS=" in m for m in messages)
        assert d.cli("wait", "demo/web", "--timeout", "10").returncode == 0
        mounts_before = sorted(m.mount_id for m in d.mounts())
        assert d.stop() == 0
        drain()
        assert any("STOPPING=1" in m for m in messages)
        assert sorted(m.mount_id for m in d.mounts()) == mounts_before != []
    finally:
        rx.close()


def test_metrics_operation_counters_move(daemon_factory):
    port = _free_port()
    d = daemon_factory(extra_args=["--metrics-address", f"127.0.0.1:{port}"])

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    def mount_successes(text: str) -> float:
        total = 0.0
        for line in text.splitlines():
            if line.startswith("volumemanager_storage_operations_total{") and 'operation_name="mount_volume"' in line \
                    and 'status="success"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    before = mount_successes(scrape())
    d.write_manifest("web.yaml", EMPTYDIR_POD)
    assert d.cli("wait", "demo/web", "--timeout", "10").returncode == 0
    wait_until(lambda: mount_successes(scrape()) == before + 1, what="the mount counter")
    text = scrape()
    assert "volumemanager_reconciler_pass_duration_seconds_count" in text
    wait_until(lambda: 'volumemanager_volumes{desired="true",state="mounted"} 1.0' in scrape(), 10,
               what="volumes-by-state gauge")


def test_wait_returns_within_milliseconds_of_the_mount(daemon, tmp_path):
    import subprocess
    import sys

    # The pod exists (wait on an unknown pod answers "no such pod" at once) but cannot mount
    # until its claim and volume appear.
    host = tmp_path / "pvdata"
    host.mkdir()
    daemon.write_manifest("web.yaml", """\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo}
spec:
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: claim1}
""")
    wait_until(lambda: daemon.states("demo/web").get("data") == "waiting", 10, what="the pod waiting for its claim")
    waiter = subprocess.Popen([sys.executable, "-m", "volumemanager", "wait", "demo/web", *daemon.common,
                               "--timeout", "20"])
    try:
        time.sleep(0.5)  # the waiter is connected and waiting before the volume can mount
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
""")
        assert waiter.wait(20) == 0
        st = daemon.status()
        assert [v["state"] for v in st["volumes"]] == ["mounted"]
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
