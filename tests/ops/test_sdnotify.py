"""sd_notify over a real AF_UNIX datagram socket bound by the test."""

from __future__ import annotations

import logging
import os
import select
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from volumemanager.sdnotify import SystemdNotifier, parse_watchdog_interval


class Receiver:
    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self) -> list[str]:
        data = self.sock.recv(4096)
        return data.decode().split("\n")

    def empty(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0.2)
        return not readable


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(5)
    try:
        if request.param == "path":
            path = str(tmp_path / "notify.sock")
            sock.bind(path)
            env_value = path
        else:
            name = f"vm-notify-test-{uuid.uuid4().hex}"
            sock.bind("\0" + name)
            env_value = "@" + name
        yield Receiver(sock, env_value)
    finally:
        sock.close()


@pytest.mark.timeout(10)
def test_ready_status_watchdog_stopping(receiver: Receiver) -> None:
    n = SystemdNotifier(environ={"NOTIFY_SOCKET": receiver.env_value})
    assert n.enabled
    assert n.ready("reconciled 3/3 volumes") is True
    assert receiver.recv() == ["READY=1", "STATUS=reconciled 3/3 volumes"]
    assert n.status("waiting for\ndevice /dev/loop7") is True
    assert receiver.recv() == ["STATUS=waiting for device /dev/loop7"]
    assert n.watchdog_ping() is True
    assert receiver.recv() == ["WATCHDOG=1"]
    assert n.reloading() is True
    lines = receiver.recv()
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert n.stopping() is True
    assert receiver.recv() == ["STOPPING=1"]
    assert receiver.empty()


def test_noop_without_notify_socket() -> None:
    n = SystemdNotifier(environ={})
    assert not n.enabled
    assert n.ready("x") is False
    assert n.status("x") is False
    assert n.watchdog_ping() is False
    assert n.stopping() is False
    assert n.watchdog_interval() is None
    assert n.watchdog_due(0.0) is False


def test_reads_process_environment(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.env_value)
    assert SystemdNotifier().notify("STATUS=hi") is True
    assert receiver.recv() == ["STATUS=hi"]
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert SystemdNotifier().notify("STATUS=hi") is False


def test_dangling_socket_never_raises_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = str(tmp_path / "gone.sock")
    n = SystemdNotifier(environ={"NOTIFY_SOCKET": missing})
    with caplog.at_level(logging.WARNING, logger="volumemanager.sdnotify"):
        assert n.ready() is False
        assert n.status("x") is False
        assert n.watchdog_ping() is False
    warnings = [r for r in caplog.records if r.name == "volumemanager.sdnotify"]
    assert len(warnings) == 1
    assert missing in warnings[0].getMessage()


def test_socket_that_is_not_a_datagram_socket(tmp_path: Path) -> None:
    """A stream listener at the path (wrong socket type) is an error, not a crash."""
    path = str(tmp_path / "stream.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
        s.listen(1)
        assert SystemdNotifier(environ={"NOTIFY_SOCKET": path}).ready() is False


def test_unsupported_socket_kind_disables() -> None:
    n = SystemdNotifier(environ={"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert n.ready() is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "4242"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "4243"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval_parsing(env: dict[str, str], expected: float | None) -> None:
    assert parse_watchdog_interval(env, pid=4242) == expected
    assert SystemdNotifier(environ=env, pid=4242).watchdog_interval() == expected


def test_watchdog_pid_defaults_to_this_process() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier(environ=env).watchdog_interval() == 1.0


@pytest.mark.timeout(10)
def test_watchdog_due_and_ping_if_due(receiver: Receiver) -> None:
    n = SystemdNotifier(environ={"NOTIFY_SOCKET": receiver.env_value, "WATCHDOG_USEC": "10000000"})
    assert n.watchdog_interval() == 5.0
    assert n.watchdog_due(100.0)  # never pinged yet
    assert n.watchdog_ping_if_due(100.0) is True
    assert receiver.recv() == ["WATCHDOG=1"]
    assert not n.watchdog_due(104.9)
    assert n.watchdog_ping_if_due(104.9) is False
    assert receiver.empty()
    assert n.watchdog_due(105.0)
    assert n.watchdog_ping_if_due(106.0) is True
    assert receiver.recv() == ["WATCHDOG=1"]


def test_notify_never_blocks_when_nobody_reads(tmp_path):
    """A full receive queue (systemd busy or stuck) drops messages instead of blocking the
    reconciler thread that sends them."""
    import socket as _socket
    import time as _time

    from volumemanager.sdnotify import SystemdNotifier

    path = str(tmp_path / "notify.sock")
    rx = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    rx.bind(path)
    try:
        n = SystemdNotifier(environ={"NOTIFY_SOCKET": path})
        start = _time.monotonic()
        results = [n.status(f"status {i}") for i in range(200)]
        assert _time.monotonic() - start < 5
        assert results[0] and not all(results), "the first are delivered, the rest dropped"
    finally:
        rx.close()
