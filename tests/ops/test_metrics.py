"""Metrics served on 127.0.0.1:<ephemeral> and scraped over real HTTP."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from volumemanager.metrics import Metrics, MetricsError, NullMetrics, start_metrics, statvfs_stats


@pytest.fixture
def served() -> Iterator[Metrics]:
    m = Metrics.start("127.0.0.1:0")
    assert isinstance(m, Metrics)
    try:
        yield m
    finally:
        m.stop()


def scrape(m: Metrics) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()) and set(got) - {"le"} == set(labels) - {"le"}:
            return float(m.group(3))
    return None


@pytest.mark.timeout(20)
def test_operations_counters_move(served: Metrics) -> None:
    assert served.port and served.port > 0
    assert served.address == f"127.0.0.1:{served.port}"
    labels = {"operation_name": "volume_mount", "volume_plugin": "kubernetes.io/empty-dir", "status": "success"}
    before = value(scrape(served), "volumemanager_storage_operations_total", **labels)
    assert before is None
    served.observe_operation("volume_mount", "kubernetes.io/empty-dir", "success", 0.2)
    served.observe_operation("volume_mount", "kubernetes.io/empty-dir", "success", 3.0)
    served.observe_operation("volume_mount", "kubernetes.io/empty-dir", "error", 0.01)
    text = scrape(served)
    assert value(text, "volumemanager_storage_operations_total", **labels) == 2
    assert value(text, "volumemanager_storage_operation_duration_seconds_count", **labels) == 2
    assert value(text, "volumemanager_storage_operation_duration_seconds_sum", **labels) == pytest.approx(3.2)
    assert value(text, "volumemanager_storage_operation_duration_seconds_bucket", le="0.25", **labels) == 1
    assert value(text, "volumemanager_storage_operations_total",
                 operation_name="volume_mount", volume_plugin="kubernetes.io/empty-dir", status="error") == 1


@pytest.mark.timeout(20)
def test_volume_state_gauge(served: Metrics) -> None:
    text = scrape(served)
    assert value(text, "volumemanager_volumes", desired="true", state="mounted") == 0
    served.set_volume_states({("true", "mounted"): 3, (True, "waiting"): 1, ("false", "unmounting"): 2})
    text = scrape(served)
    assert value(text, "volumemanager_volumes", desired="true", state="mounted") == 3
    assert value(text, "volumemanager_volumes", desired="true", state="waiting") == 1
    assert value(text, "volumemanager_volumes", desired="false", state="unmounting") == 2
    served.set_volume_states({("true", "mounted"): 4})
    text = scrape(served)
    assert value(text, "volumemanager_volumes", desired="true", state="mounted") == 4
    assert value(text, "volumemanager_volumes", desired="true", state="waiting") == 0
    assert value(text, "volumemanager_volumes", desired="false", state="unmounting") == 0


@pytest.mark.timeout(20)
def test_reconcile_histogram(served: Metrics) -> None:
    served.observe_reconcile(0.004)
    served.observe_reconcile(0.5)
    text = scrape(served)
    assert value(text, "volumemanager_reconciler_pass_duration_seconds_count") == 2
    assert value(text, "volumemanager_reconciler_pass_duration_seconds_bucket", le="0.005") == 1


@pytest.mark.timeout(20)
def test_volume_stats_from_a_real_tmpfs(served: Metrics, tmp_path: Path) -> None:
    mnt = tmp_path / "vol"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=100", "vmtest", str(mnt)], check=True)
    try:
        (mnt / "f").write_bytes(b"x" * 1024 * 1024)
        stats = statvfs_stats(str(mnt))
        assert stats["capacity_bytes"] == 4 * 1024 * 1024
        assert stats["used_bytes"] >= 1024 * 1024
        assert stats["available_bytes"] == stats["capacity_bytes"] - stats["used_bytes"]
        assert stats["inodes"] == 100
        assert stats["inodes_used"] >= 2 and stats["inodes_free"] == 100 - stats["inodes_used"]
        served.set_volume_stats("team-a/web", "cache", stats)
        text = scrape(served)
        lbl = {"namespace": "team-a", "pod": "web", "volume": "cache"}
        assert value(text, "volumemanager_volume_stats_capacity_bytes", **lbl) == 4 * 1024 * 1024
        assert value(text, "volumemanager_volume_stats_used_bytes", **lbl) == stats["used_bytes"]
        assert value(text, "volumemanager_volume_stats_available_bytes", **lbl) == stats["available_bytes"]
        assert value(text, "volumemanager_volume_stats_inodes", **lbl) == 100
        assert value(text, "volumemanager_volume_stats_inodes_used", **lbl) == stats["inodes_used"]
        assert value(text, "volumemanager_volume_stats_inodes_free", **lbl) == stats["inodes_free"]
        served.forget_volume_stats("team-a/web", "cache")
        served.forget_volume_stats("team-a/web", "cache")  # idempotent
        assert "team-a" not in scrape(served)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_several_instances_have_private_registries() -> None:
    a, b = Metrics(), Metrics()
    a.observe_reconcile(1.0)
    assert b"volumemanager_reconciler_pass_duration_seconds_count 1.0" in a.render()
    assert b"volumemanager_reconciler_pass_duration_seconds_count 0.0" in b.render()


def test_empty_address_disables() -> None:
    for address in ("", "  ", None):
        m = start_metrics(address)
        assert isinstance(m, NullMetrics) and not isinstance(m, Metrics)
        assert not m.enabled
        m.observe_operation("volume_mount", "p", "success", 1.0)
        m.set_volume_states({("true", "mounted"): 1})
        m.observe_reconcile(0.1)
        m.set_volume_stats("a/b", "c", {"capacity_bytes": 1})
        m.forget_volume_stats("a/b", "c")
        m.stop()
    assert isinstance(Metrics.start(""), NullMetrics)


def test_prometheus_client_not_imported_when_disabled() -> None:
    code = ("import sys; from volumemanager.metrics import start_metrics; m = start_metrics(''); "
            "m.observe_reconcile(1); print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("address", ["9469", "127.0.0.1:http", "127.0.0.1:70000"])
def test_bad_address(address: str) -> None:
    with pytest.raises(MetricsError, match=re.escape(address)):
        start_metrics(address)


@pytest.mark.timeout(20)
def test_port_in_use_is_a_metrics_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(MetricsError, match=f"127.0.0.1:{port}"):
            start_metrics(f"127.0.0.1:{port}")
