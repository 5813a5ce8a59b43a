"""DeviceEventSource with real uevents: loop devices attached with losetup, and a real udevd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from tests.fixtures_mounts import make_loop_device, require_root, require_tools
from volumemanager.devices import DeviceEvent, DeviceEventSource, udevd_alive

pytestmark = pytest.mark.timeout(30)

EVENT_WAIT = 2.0


class Collector:
    def __init__(self) -> None:
        self.events: list[DeviceEvent] = []
        self.cond = threading.Condition()

    def __call__(self, event: DeviceEvent) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.events)

    def wait_for(self, predicate, timeout: float = EVENT_WAIT, since: int = 0) -> DeviceEvent | None:
        """The first event (from index `since` on) that matches, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for event in self.events[since:]:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.cond.wait(remaining)


@pytest.fixture
def source():
    src = DeviceEventSource(recheck_interval=0.2)
    try:
        yield src
    finally:
        src.stop()


def test_udevd_alive_probes_the_control_socket(tmp_path):
    path = str(tmp_path / "control")
    assert not udevd_alive(path)  # never ran: ENOENT
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(1)
    try:
        assert udevd_alive(path)
    finally:
        listener.close()
    assert os.path.exists(path)
    assert not udevd_alive(path)  # stale socket file: ECONNREFUSED


def test_kernel_source_sees_a_loop_attach(source, tmp_path):
    require_root()
    require_tools("losetup")
    if udevd_alive():
        pytest.skip("udevd is running; this test is about the kernel source")
    got = Collector()
    source.start(got)
    assert source.mode == "kernel"
    with make_loop_device(16, tmp_path) as loop:
        rdev = os.stat(loop.path).st_rdev
        event = got.wait_for(lambda e: e.devnode == loop.path)
        assert event is not None, f"no event for {loop.path} within {EVENT_WAIT}s: {got.events}"
        assert (event.major, event.minor) == (os.major(rdev), os.minor(rdev))
        assert event.action in ("add", "change")
        assert event.source == "kernel"
        assert event.properties.get("SUBSYSTEM") == "block"
        if os.path.exists(f"/sys/class/block/{os.path.basename(loop.path)}/diskseq"):
            assert event.diskseq is not None


def test_stop_is_prompt_and_restartable():
    src = DeviceEventSource(recheck_interval=60)
    src.start(lambda e: None)
    assert src.running
    start = time.monotonic()
    src.stop()
    assert time.monotonic() - start < 0.5
    assert not src.running and src.mode is None
    src.stop()  # idempotent
    src.start(lambda e: None)
    src.stop()


def test_a_failing_callback_does_not_stop_the_source(source, tmp_path):
    require_root()
    require_tools("losetup")
    got = Collector()

    def flaky(event: DeviceEvent) -> None:
        got(event)
        raise RuntimeError("consumer bug")

    source.start(flaky)
    with make_loop_device(8, tmp_path) as first:
        assert got.wait_for(lambda e: e.devnode == first.path)
    since = got.mark()
    with make_loop_device(8, tmp_path) as second:
        assert got.wait_for(lambda e: e.devnode == second.path, since=since)
    assert source.running


@pytest.mark.timeout(60)
def test_switches_to_udev_and_back(source, udevd, tmp_path):
    require_tools("losetup", "mkfs.ext4")
    got = Collector()
    image = tmp_path / "fs.img"
    with open(image, "xb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)

    source.start(got)
    assert source.mode == "udev"  # udevd answered on /run/udev/control
    proc = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                          text=True)
    dev = proc.stdout.strip()
    try:
        event = got.wait_for(lambda e: e.devnode == dev and e.properties.get("ID_FS_TYPE") == "ext4", 5.0)
        assert event is not None, f"no udev event with ID_FS_TYPE for {dev}: {got.events}"
        assert event.source == "udev"
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)

    os.kill(udevd.pid, signal.SIGTERM)  # udevd stops: the source must fall back to kernel events
    udevd.wait(10)
    deadline = time.monotonic() + 5
    while source.mode != "kernel" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert source.mode == "kernel"
    since = got.mark()
    with make_loop_device(8, tmp_path) as loop:
        assert got.wait_for(lambda e: e.devnode == loop.path and e.source == "kernel", since=since)
