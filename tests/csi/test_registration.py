"""Driver registry and discovery: kubelet-style registration sockets and static drivers,
against real csi-loop processes."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable

import pytest

from volumemanager.csi.registration import (
    PluginRegistrationWatcher,
    parse_static_driver,
    register_static_driver,
    supported_version,
)
from volumemanager.csi.registry import DriverInfo, DriverRegistry

WAIT_SECONDS = 15.0


def wait_for(predicate: Callable[[], object], timeout: float = WAIT_SECONDS, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def watcher(registry_dir):
    registry = DriverRegistry()
    w = PluginRegistrationWatcher(str(registry_dir), registry)
    try:
        yield w
    finally:
        w.stop()
        registry.close()


def _info(name: str = "d.test", endpoint: str = "unix:///tmp/x.sock") -> DriverInfo:
    return DriverInfo(name, endpoint, "n1", frozenset({"STAGE_UNSTAGE_VOLUME"}), 0, "static", time.time(), None)


def test_registry_add_remove_subscribe_and_client_cache() -> None:
    registry = DriverRegistry()
    events: list[str] = []
    registry.subscribe(events.append)
    registry.add(_info())
    assert registry.get("d.test").has("STAGE_UNSTAGE_VOLUME")
    c1 = registry.client("d.test")
    assert registry.client("d.test") is c1
    registry.add(_info())  # re-registration (driver restart): a fresh client
    c2 = registry.client("d.test")
    assert c2 is not c1
    assert [d.name for d in registry.list()] == ["d.test"]
    registry.remove("d.test")
    assert registry.get("d.test") is None
    with pytest.raises(KeyError, match="d.test"):
        registry.client("d.test")
    assert events == ["d.test", "d.test", "d.test"]
    registry.remove("d.test")  # unknown: no event
    assert len(events) == 3


def test_registry_subscriber_failure_does_not_break_add() -> None:
    registry = DriverRegistry()
    registry.subscribe(lambda name: 1 / 0)
    registry.add(_info())
    assert registry.get("d.test") is not None


@pytest.mark.timeout(60)
def test_registers_through_socket_deregisters_on_exit_and_reregisters_on_restart(csi_loop, watcher) -> None:
    plugin = csi_loop(name="loop-a.test", node_id="node-7")
    woken: list[str] = []
    watcher.registry.subscribe(woken.append)
    watcher.start()
    wait_for(lambda: watcher.registry.get("loop-a.test"), what="registration")
    info = watcher.registry.get("loop-a.test")
    assert info.source == "registration"
    assert info.node_id == "node-7"
    assert info.endpoint == plugin.endpoint
    assert info.socket_path == plugin.registration_socket
    assert "STAGE_UNSTAGE_VOLUME" in info.capabilities
    wait_for(lambda: plugin.calls("NotifyRegistrationStatus"), what="NotifyRegistrationStatus")
    assert plugin.calls("NotifyRegistrationStatus")[0]["plugin_registered"] is True
    assert woken == ["loop-a.test"]

    plugin.stop()  # removes its sockets on SIGTERM
    wait_for(lambda: watcher.registry.get("loop-a.test") is None, what="deregistration")

    plugin.start()
    wait_for(lambda: watcher.registry.get("loop-a.test"), what="re-registration")
    assert watcher.registry.get("loop-a.test").registered_at > info.registered_at
    assert woken == ["loop-a.test"] * 3


@pytest.mark.timeout(60)
def test_plugin_started_after_watcher_and_crash_restart(csi_loop, watcher) -> None:
    watcher.start()
    plugin = csi_loop(name="late.test")
    wait_for(lambda: watcher.registry.get("late.test"), what="registration of a late plugin")
    first = watcher.registry.get("late.test")
    # A crash leaves the sockets behind; the restarted plugin replaces them (new inode).
    plugin.kill()
    plugin.start()
    wait_for(
        lambda: (d := watcher.registry.get("late.test")) is not None and d.registered_at > first.registered_at,
        what="re-registration after a crash",
    )
    with watcher.registry.client("late.test") as client:
        assert client.node_get_info().node_id == "node1"


@pytest.mark.timeout(60)
def test_ignores_hidden_and_non_socket_files(registry_dir, watcher) -> None:
    (registry_dir / "notes.txt").write_text("x")
    hidden = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        hidden.bind(str(registry_dir / ".hidden-reg.sock"))
        watcher.start()
        (registry_dir / "later.txt").write_text("y")
        time.sleep(0.5)
        assert watcher._workers == {}
    finally:
        hidden.close()


@pytest.mark.timeout(60)
def test_endpoint_coming_up_after_registration_socket_is_retried(csi_loop, watcher) -> None:
    """The registration socket answers before the CSI endpoint exists: registration retries
    NodeGetInfo until the endpoint is up, then notifies the registrar once, with success."""
    watcher.start()
    plugin = csi_loop(name="slow.test", csi_start_delay=1.5)
    assert not os.path.exists(plugin.socket_path)
    wait_for(lambda: watcher.registry.get("slow.test"), what="registration once the endpoint is up")
    assert os.path.exists(plugin.socket_path)
    wait_for(lambda: plugin.calls("NotifyRegistrationStatus"), what="NotifyRegistrationStatus")
    assert [c["plugin_registered"] for c in plugin.calls("NotifyRegistrationStatus")] == [True]
    assert len(plugin.calls("GetInfo")) >= 2  # the first attempts found no endpoint


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args, reason",
    [
        (("--registration-type", "DevicePlugin"), "is not 'CSIPlugin'"),
        (("--supported-versions", "0.3.0,2.0.0"), "CSI 1.x"),
    ],
)
def test_unacceptable_registrar_is_told_why(csi_loop, watcher, args, reason) -> None:
    plugin = csi_loop(name="odd.test", extra_args=args)
    watcher.start()
    wait_for(lambda: plugin.calls("NotifyRegistrationStatus"), what="NotifyRegistrationStatus")
    [status] = plugin.calls("NotifyRegistrationStatus")
    assert status["plugin_registered"] is False
    assert reason in status["error"]
    assert watcher.registry.get("odd.test") is None
    assert plugin.calls("NodeGetInfo") == []


@pytest.mark.timeout(60)
def test_static_driver_registers_when_it_comes_up(csi_loop) -> None:
    plugin = csi_loop(name="static.test", registration=False, start=False)
    registry = DriverRegistry()
    name, endpoint = parse_static_driver(f"static.test={plugin.endpoint}")
    registrar = register_static_driver(registry, name, endpoint)
    try:
        time.sleep(0.5)
        assert registry.get("static.test") is None  # not up yet: retried in the background
        plugin.start()
        assert registrar.registered.wait(WAIT_SECONDS)
        info = registry.get("static.test")
        assert info.source == "static" and info.socket_path is None
        assert "GET_VOLUME_STATS" in info.capabilities
    finally:
        registrar.stop()
        registry.close()


def test_parse_static_driver() -> None:
    assert parse_static_driver("csi.example.com=unix:///run/csi.sock") == ("csi.example.com", "unix:///run/csi.sock")
    assert parse_static_driver("d=/run/csi.sock") == ("d", "unix:///run/csi.sock")
    for bad in ("nodriver", "=unix:///x", "d=", "d=tcp://h:1", "bad name=unix:///x"):
        with pytest.raises(ValueError, match="--csi-driver"):
            parse_static_driver(bad)


def test_supported_version() -> None:
    assert supported_version(["1.0.0"]) == "1.0.0"
    assert supported_version(["v1.0.0"]) == "v1.0.0"
    assert supported_version(["0.3.0", "1.12"]) == "1.12"
    assert supported_version(["0.3.0", "2.0.0"]) is None
    assert supported_version([]) is None
