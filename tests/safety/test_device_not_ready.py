"""A local PV whose device node cannot be used says why, naming the errno where an open
fails: a node of an unregistered device number ("no device is registered at M:0: open fails
with ENXIO") is told apart from a device that is simply not there yet. It is waited for,
never called blank, never formatted."""

from __future__ import annotations

import os

import pytest

from mount_utils.device import device_not_ready_reason
from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root
from tests.safety.test_format_safety import pv_docs, rows

pytestmark = [pytest.mark.timeout(120)]


def _unused_block_major() -> int:
    with open("/proc/devices") as f:
        block = f.read().split("Block devices:")[1]
    used = {int(line.split()[0]) for line in block.splitlines() if line.strip()}
    major = next((m for m in (*range(60, 64), *range(240, 254)) if m not in used), None)
    if major is None:
        pytest.skip("no unused block major")
    return major


def _dead_node(tmp_path) -> tuple[str, int]:
    require_root()
    major = _unused_block_major()
    node = tmp_path / "nodev"
    os.mknod(node, 0o600 | 0o060000, os.makedev(major, 0))
    return str(node), major


def test_reasons_name_what_is_wrong(tmp_path, loop_device):
    node, major = _dead_node(tmp_path)
    assert device_not_ready_reason(node) == (
        f"no device is registered at {major}:0: open fails with ENXIO (No such device or address)")
    assert device_not_ready_reason(str(tmp_path / "missing")) == "it does not exist"
    (tmp_path / "file").write_text("x")
    assert device_not_ready_reason(str(tmp_path / "file")) == "it is not a block device"
    assert device_not_ready_reason(loop_device.path) is None


def test_the_daemon_says_why_it_waits_for_a_dead_node(daemon_factory, tmp_path):
    node, major = _dead_node(tmp_path)
    d = daemon_factory(start=False)
    d.write_manifest("pv.yaml", pv_docs("gone", node))
    d.start()
    wait_until(lambda: rows(d).get("demo/gone", {}).get("state") == "waiting", 20, 0.1, "waiting for the device")
    why = f"no device is registered at {major}:0: open fails with ENXIO (No such device or address)"
    row = rows(d)["demo/gone"]
    assert row["waiting_for"] == f"device {node}" and row["error_code"] == "DEVICE_NOT_READY"
    assert row["last_error"] == f"DEVICE_NOT_READY: waiting for device {node}: {why}"
    explain = d.cli("explain", "demo/gone", check=False)
    assert explain.returncode == 1
    assert f"  - waiting for device {node}: {why} since " in explain.stdout, explain.stdout
    assert "formatting" not in d.log() and not d.mounts()
