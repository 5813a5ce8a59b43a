"""Issue 11, item 5: teardown never needs free space.

The daemon's root dir is a small tmpfs that the pods' disk emptyDirs fill up. The journal's
reserve is given back (pods added while full still get their records); once that is gone
too, new pods wait with an error naming the root dir, while removing pods still tears
their emptyDirs down (unrecorded), which brings the space back, after which the waiting
pods mount without a restart. The data of the pod that stays is intact, and a restart
afterwards reports no completed step as interrupted."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess

import pytest

from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root, unmount_all_under

pytestmark = [pytest.mark.timeout(120)]

ROOT_FS_SIZE = "32m"


def pod(name: str) -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: full}}
spec:
  volumes:
  - name: scratch
    emptyDir: {{}}
"""


def pods(*names: str) -> str:
    return "---\n".join(pod(n) for n in names)


def fill(path: str) -> None:
    """Write to ``path`` until the filesystem refuses another byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 4096, 1):
            chunk = b"\xa5" * size
            while True:
                try:
                    if os.write(fd, chunk) < size:
                        break
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def full_daemon(daemon_factory, tmp_path):
    """A daemon (not started) whose root dir is a tmpfs of ROOT_FS_SIZE."""
    require_root()
    d = daemon_factory(start=False)
    d.root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={ROOT_FS_SIZE},mode=0755", "tmpfs", str(d.root)],
                   check=True, timeout=30)
    yield d
    d.stop()
    left = unmount_all_under(tmp_path)
    assert not left, f"could not unmount {left}"


def scratch_dir(d, name: str) -> str:
    (row,) = [v for v in d.status()["volumes"] if v["pod"] == f"full/{name}"]
    assert row["state"] == "mounted", row
    return row["mount_path"]


def test_a_full_root_dir_never_blocks_teardown_and_recovers_without_restart(full_daemon):
    d = full_daemon
    state_dir = str(d.root / "state")
    d.write_manifest("pods.yaml", pods("keep", "gone-1", "gone-2"))
    d.start()
    for name in ("keep", "gone-1", "gone-2"):
        assert d.cli("wait", f"full/{name}", "--timeout", "30").returncode == 0

    # The pod that stays holds data; the two that go fill the filesystem.
    data = os.urandom(2 << 20)
    with open(os.path.join(scratch_dir(d, "keep"), "data"), "wb") as f:
        f.write(data)
    fill(os.path.join(scratch_dir(d, "gone-1"), "fill"))
    fill(os.path.join(scratch_dir(d, "gone-2"), "fill"))
    assert free_bytes(d.root) < 64 << 10

    # Full: once the journal's last page is used up, it gives its reserve back, so the next
    # pods still mount, recorded.
    late_1 = [f"late-1-{i}" for i in range(16)]  # more records than the rest of a page holds
    d.write_manifest("pods.yaml", pods("keep", "gone-1", "gone-2", *late_1))
    for name in late_1:
        assert d.cli("wait", f"full/{name}", "--timeout", "30").returncode == 0
    assert os.stat(os.path.join(state_dir, "intents.reserve")).st_size == 0
    # ... and the freed reserve fills up too (someone else's writes).
    fill(os.path.join(scratch_dir(d, "keep"), "more"))

    # Nothing left: once the journal's last page is full too, new pods wait, saying why and where.
    late_2 = [f"late-2-{i}" for i in range(16)]
    d.write_manifest("pods.yaml", pods("keep", "gone-1", "gone-2", *late_1, *late_2))

    def a_waiting_row():
        return next((v for v in d.status()["volumes"] if v["error_code"] == "NO_SPACE"), None)

    row = wait_until(a_waiting_row, 30, 0.2, "a new pod to report NO_SPACE")
    assert row["state"] == "waiting" and row["pod"].startswith("full/late-2-"), row
    assert row["last_error"] == (f"NO_SPACE: no space left on device in {state_dir}: cannot record the intent to "
                                 f"set_up {row['volume_id']}"), row
    explain = d.cli("explain", row["pod"], check=False).stdout
    assert f"waiting for free space in {state_dir}" in explain, explain

    # Removing the full pods tears their emptyDirs down although nothing can be recorded.
    assert free_bytes(d.root) < 64 << 10
    gone = [scratch_dir(d, "gone-1"), scratch_dir(d, "gone-2")]
    d.write_manifest("pods.yaml", pods("keep", *late_1, *late_2))
    wait_until(lambda: not any(os.path.exists(p) for p in gone), 30, 0.1, "the full emptyDirs to be removed")
    assert free_bytes(d.root) > 8 << 20

    # Space is back: the waiting pods mount without a restart, and the reserve is there again.
    for name in late_2:
        assert d.cli("wait", f"full/{name}", "--timeout", "30").returncode == 0
    wait_until(lambda: os.stat(os.path.join(state_dir, "intents.reserve")).st_blocks * 512 >= 4 << 20, 20, 0.2,
               "the journal's reserve to be allocated again")
    with open(os.path.join(scratch_dir(d, "keep"), "data"), "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()

    log = d.log()
    assert log.count(f"no space left on device in {state_dir} (") == 1, log[-4000:]
    assert log.count("teardown steps proceed without an intent record") == 1, log[-4000:]
    assert log.count(f"space is back in {state_dir}") == 1, log[-4000:]

    # A restart: every step that completed is known to have completed.
    assert d.stop() == 0
    d.start()
    st = d.status()
    assert st["interrupted_at_start"] == [], st["interrupted_at_start"]
    assert {v["pod"]: v["state"] for v in st["volumes"]} == {
        f"full/{name}": "mounted" for name in ("keep", *late_1, *late_2)}
    with open(os.path.join(scratch_dir(d, "keep"), "data"), "rb") as f:
        assert f.read() == data


def test_the_daemon_starts_on_a_full_root_dir_and_tears_down(full_daemon):
    """Stopped with a full root dir (the previous run's reserve given back and used up), the
    daemon still starts, removes what is no longer desired, and mounts once space returns."""
    d = full_daemon
    d.write_manifest("pods.yaml", pods("keep", "gone"))
    d.start()
    for name in ("keep", "gone"):
        assert d.cli("wait", f"full/{name}", "--timeout", "30").returncode == 0
    data = os.urandom(1 << 20)
    with open(os.path.join(scratch_dir(d, "keep"), "data"), "wb") as f:
        f.write(data)
    gone = scratch_dir(d, "gone")
    assert d.stop() == 0
    os.truncate(d.root / "state" / "intents.reserve", 0)  # given back by an earlier outage
    fill(os.path.join(gone, "fill"))

    d.write_manifest("pods.yaml", pods("keep", "new"))
    d.start()
    wait_until(lambda: not os.path.exists(gone), 30, 0.1, "the full emptyDir to be removed")
    assert d.cli("wait", "full/new", "--timeout", "30").returncode == 0
    st = d.status()
    assert st["interrupted_at_start"] == []
    with open(os.path.join(scratch_dir(d, "keep"), "data"), "rb") as f:
        assert f.read() == data
