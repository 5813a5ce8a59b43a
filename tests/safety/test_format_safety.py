"""Issue 11, items 1-2, through the real daemon: a local PV on a device that is not provably
blank, is in use, or holds another filesystem than its fsType is refused with a clear message
in ``status`` and ``explain``, and every byte of the device is as it was.

Devices are loop devices over sparse files (and one mknod'd node of an unregistered device
number), never a real disk.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root, require_tools, sha256_of, write_mbr

pytestmark = [pytest.mark.timeout(120)]

MIB = 1 << 20


@pytest.fixture(autouse=True)
def _tools():
    require_root()
    require_tools("losetup", "blkid", "wipefs", "mkfs.ext4")


def pv_docs(name: str, path: str, fs_type: str | None = None) -> str:
    """A local PV, its claim and one pod using it, all named `name` (namespace demo)."""
    local = f"{{path: {path}, fsType: {fs_type}}}" if fs_type else f"{{path: {path}}}"
    return f"""\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {name}}}
spec:
  local: {local}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}, namespace: demo}}
spec: {{volumeName: {name}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: demo}}
spec:
  volumes:
  - name: vol
    persistentVolumeClaim: {{claimName: {name}}}
"""


def write_at(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def rows(d) -> dict[str, dict]:
    return {v["pod"]: v for v in d.status()["volumes"]}


def wait_for_errors(d, pods: list[str]) -> dict[str, dict]:
    def all_failed():
        r = rows(d)
        return r if all(r.get(f"demo/{p}", {}).get("state") == "error" for p in pods) else None

    try:
        return wait_until(all_failed, 40, 0.1, "every volume to be refused")
    except AssertionError:
        raise AssertionError(f"not all refused: {rows(d)}\n{d.log(4000)}") from None


def test_devices_that_are_not_blank_are_refused_and_intact(loop_device_factory, daemon_factory):
    require_tools("mkswap", "mkfs.xfs")
    devices = {name: loop_device_factory(size_mb=16) for name in ("random", "text", "tail", "swap", "mbr")}
    devices["xfs"] = loop_device_factory(size_mb=320)
    write_at(devices["random"].path, 0, os.urandom(8192).replace(b"\0", b"\x01"))
    write_at(devices["text"].path, 0, b"customer database export, do not lose\n" * 50)
    write_at(devices["tail"].path, 16 * MIB - 4096, b"backup header at the end")
    subprocess.run(["mkswap", devices["swap"].path], check=True, capture_output=True, timeout=30)
    write_mbr(devices["mbr"].path)
    subprocess.run(["mkfs.xfs", "-q", "-f", devices["xfs"].path], check=True, capture_output=True, timeout=60)
    before = {name: sha256_of(dev.path) for name, dev in devices.items()}
    expected = {
        "random": ("REFUSE_TO_FORMAT", "non-zero data at offset 0"),
        "text": ("REFUSE_TO_FORMAT", "non-zero data at offset 0"),
        "tail": ("REFUSE_TO_FORMAT", f"non-zero data at offset {16 * MIB - 4096}"),
        "swap": ("REFUSE_TO_FORMAT", "swap signature"),
        "mbr": ("REFUSE_TO_FORMAT", "partition table (dos)"),
        "xfs": ("FILESYSTEM_MISMATCH", "filesystem of type xfs but fsType ext4"),
    }

    d = daemon_factory(start=False)
    d.write_manifest("pvs.yaml", "---\n".join(pv_docs(name, dev.path) for name, dev in devices.items()))
    d.start()
    found = wait_for_errors(d, list(devices))
    for name, (code, text) in expected.items():
        row = found[f"demo/{name}"]
        assert row["error_code"] == code, (name, row)
        assert text in row["last_error"] and devices[name].path in row["last_error"], (name, row)
        explained = d.cli("explain", f"demo/{name}", check=False)
        assert explained.returncode == 1 and code in explained.stdout and text in explained.stdout, explained.stdout
    assert not d.mounts(), "nothing may be mounted"
    assert "formatting /dev/" not in d.log()
    d.stop()
    for name, dev in devices.items():
        assert sha256_of(dev.path) == before[name], f"{name}: the device was changed"


def test_device_mounted_elsewhere_is_never_fscked_nor_mounted_again(loop_device_factory, daemon_factory,
                                                                    tmp_path):
    dev = loop_device_factory(size_mb=16)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev.path],
                   check=True, capture_output=True, timeout=60)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(["mount", "-t", "ext4", dev.path, str(elsewhere)], check=True, capture_output=True, timeout=30)
    (elsewhere / "owner.txt").write_text("someone else's data")
    os.sync()
    before = sha256_of(dev.path)

    # The outermost edge: a stand-in fsck first on the daemon's PATH records any call.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fsck_ran = tmp_path / "fsck-ran"
    (bindir / "fsck").write_text(f"#!/bin/sh\necho \"$@\" >> {fsck_ran}\nexit 0\n")
    (bindir / "fsck").chmod(0o755)
    d = daemon_factory(start=False, env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    d.write_manifest("pv.yaml", pv_docs("busy", dev.path))
    d.start()
    row = wait_for_errors(d, ["busy"])["demo/busy"]
    assert row["error_code"] == "DEVICE_IN_USE", row
    assert f"mounted at {elsewhere}" in row["last_error"] and dev.path in row["last_error"], row
    assert f"mounted at {elsewhere}" in d.cli("explain", "demo/busy", check=False).stdout
    assert not d.mounts(), "mounted again by the daemon"
    assert not fsck_ran.exists(), "fsck ran on a device mounted elsewhere"
    assert "formatting /dev/" not in d.log()
    d.stop()
    assert sha256_of(dev.path) == before
    assert (elsewhere / "owner.txt").read_text() == "someone else's data"


def test_device_node_that_cannot_be_opened_is_never_formatted(daemon_factory, tmp_path):
    """A node of an unregistered block major (open: ENXIO), like a disk the daemon may not
    open: blkid -p calls it blank (exit 2); the daemon does not, and waits for it."""
    with open("/proc/devices") as f:
        block = f.read().split("Block devices:")[1]
    used = {int(line.split()[0]) for line in block.splitlines() if line.strip()}
    major = next((m for m in (*range(60, 64), *range(240, 254)) if m not in used), None)
    if major is None:
        pytest.skip("no unused block major")
    node = tmp_path / "nodev"
    os.mknod(node, 0o600 | 0o060000, os.makedev(major, 0))
    d = daemon_factory(start=False)
    d.write_manifest("pv.yaml", pv_docs("gone", str(node)))
    d.start()
    wait_until(lambda: rows(d).get("demo/gone", {}).get("state") == "waiting", 20, 0.1, "waiting for the device")
    assert f"waiting for device {node}" in d.cli("explain", "demo/gone", check=False).stdout
    assert "formatting" not in d.log() and not d.mounts()
