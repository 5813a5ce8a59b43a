"""Block-device arrival and departure as *hints* for the reconciler.

A volume that waits for its device (a local PV on ``/dev/loop3``, say) should be looked at again
as soon as the device appears, not at the next periodic resync. The kernel announces block
devices over netlink; udevd, when it runs, re-broadcasts each event after its rules have run
(with ``ID_FS_TYPE``, ``DEVLINKS``, ...). Measured on this kind of host (see
``/work/shared/reference/python-ecosystem.md`` §1):

* with no udevd, ``source='udev'`` binds fine and then stays silent forever, so the source must
  be chosen by probing udevd, and re-probed, because udevd can start or stop under us;
* kernel-source events carry only ``ACTION, DEVNAME, MAJOR, MINOR, DISKSEQ, ...``; attach and
  detach of a loop device are both ``change``; udevd may duplicate events.

Hence events are hints only: the consumer re-examines the volumes whose device matches and
never acts on the payload alone. Nothing here dedupes, and a periodic full resync elsewhere
covers anything missed while no monitor was listening (for example during a source switch).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import pyudev

log = logging.getLogger(__name__)

#: udevd's control socket; a successful connect() means udevd is alive. A stale socket file
#: left by a dead udevd gives ECONNREFUSED, a never-started one ENOENT.
UDEV_CONTROL_PATH = "/run/udev/control"

#: How often the reader thread re-probes udevd. udevd starting or stopping is rare (boot,
#: package upgrade); 5 s bounds how long we listen to a silent source after udevd dies, and
#: the periodic resync covers that window anyway.
UDEVD_RECHECK_INTERVAL = 5.0

#: The control-socket connect is local and answered by the kernel, so it never needs long;
#: the bound only protects against a wedged udevd with a full listen backlog.
UDEVD_PROBE_TIMEOUT = 0.5

#: How long ``stop()`` waits for the reader thread. It wakes on the self-pipe at once; the
#: bound only matters if the callback is stuck, and then we give up rather than hang shutdown.
STOP_JOIN_TIMEOUT = 5.0

MODE_UDEV = "udev"
MODE_KERNEL = "kernel"


def udevd_alive(control_path: str = UDEV_CONTROL_PATH) -> bool:
    """True when something accepts connections on udevd's control socket.

    ``/run/udev`` existing proves nothing: udevd leaves the socket file and its database behind
    when it dies, and that database then goes stale.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(UDEVD_PROBE_TIMEOUT)
        sock.connect(control_path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


@dataclass(frozen=True)
class DeviceEvent:
    """One block-device uevent. ``devnode`` is ``/dev/<name>``; ``diskseq`` (kernel ≥5.15)
    changes whenever new media appear behind the same node, so ``(devnode, diskseq)`` tells
    "the same /dev/loop3, but a different backing file" apart."""

    action: str
    devnode: str | None
    major: int | None
    minor: int | None
    diskseq: int | None
    # Left out of ==/hash so events can be deduplicated in sets (a dict is not hashable).
    properties: Mapping[str, str] = field(default_factory=dict, compare=False)
    source: str = MODE_KERNEL


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def event_from_device(device: pyudev.Device, source: str) -> DeviceEvent:
    """Build a DeviceEvent from the properties carried by the netlink message itself.

    Only the message's own properties are used: reading the udev database when udevd is dead
    would return stale data.
    """
    props = {str(k): str(v) for k, v in device.properties.items()}
    devnode = props.get("DEVNAME")
    if devnode and not devnode.startswith("/"):
        devnode = "/dev/" + devnode
    return DeviceEvent(
        action=props.get("ACTION") or (device.action or ""),
        devnode=devnode,
        major=_int_or_none(props.get("MAJOR")),
        minor=_int_or_none(props.get("MINOR")),
        diskseq=_int_or_none(props.get("DISKSEQ")),
        properties=props,
        source=source,
    )


class DeviceEventSource:
    """Delivers block-device events to a callback from one reader thread.

    The callback runs on the reader thread; it must be quick (enqueue work, don't mount).
    An exception from it is logged and the source keeps going.
    """

    def __init__(
        self,
        control_path: str = UDEV_CONTROL_PATH,
        recheck_interval: float = UDEVD_RECHECK_INTERVAL,
    ) -> None:
        self._control_path = control_path
        self._recheck_interval = recheck_interval
        self._context = pyudev.Context()
        self._monitor: pyudev.Monitor | None = None
        self._mode: str | None = None
        self._thread: threading.Thread | None = None
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def mode(self) -> str | None:
        """``"udev"`` or ``"kernel"`` while running, None before start."""
        return self._mode

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _open_monitor(self, mode: str) -> pyudev.Monitor:
        monitor = pyudev.Monitor.from_netlink(self._context, source=mode)
        monitor.filter_by(subsystem="block")
        monitor.start()
        return monitor

    def _choose_mode(self) -> str:
        return MODE_UDEV if udevd_alive(self._control_path) else MODE_KERNEL

    def start(self, on_event: Callable[[DeviceEvent], None]) -> None:
        """Open the monitor (source chosen by probing udevd) and start the reader thread."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("DeviceEventSource already started")
            self._stopping.clear()
            mode = self._choose_mode()
            self._monitor = self._open_monitor(mode)
            self._mode = mode
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            self._thread = threading.Thread(
                target=self._run, args=(on_event,), name="device-events", daemon=True
            )
            self._thread.start()
        log.info("device events: listening to %s uevents for subsystem block", mode)

    def stop(self) -> None:
        """Stop the reader thread promptly (self-pipe wake-up) and close the monitor."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            self._stopping.set()
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if thread is threading.current_thread():
            return  # called from the callback: the loop ends after it returns; fds leak until GC
        thread.join(STOP_JOIN_TIMEOUT)
        if thread.is_alive():
            log.warning("device events: reader thread did not stop within %.1fs", STOP_JOIN_TIMEOUT)
            return  # leave fds to the thread rather than closing them under it
        with self._lock:
            for fd in (self._wake_r, self._wake_w):
                if fd is not None:
                    os.close(fd)
            self._wake_r = self._wake_w = None
            self._monitor = None  # pyudev closes the netlink socket when the monitor is freed
            self._thread = None
            self._mode = None

    # --- reader thread --------------------------------------------------------------------

    def _run(self, on_event: Callable[[DeviceEvent], None]) -> None:
        next_check = _now() + self._recheck_interval
        while not self._stopping.is_set():
            monitor = self._monitor
            assert monitor is not None
            timeout = max(0.0, next_check - _now())
            poller = select.poll()
            poller.register(monitor.fileno(), select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            try:
                ready = poller.poll(timeout * 1000)
            except InterruptedError:
                continue
            if self._stopping.is_set():
                break
            if any(fd == monitor.fileno() for fd, _ in ready):
                self._drain(monitor, on_event)
            if _now() >= next_check:
                self._maybe_switch()
                next_check = _now() + self._recheck_interval

    def _drain(self, monitor: pyudev.Monitor, on_event: Callable[[DeviceEvent], None]) -> None:
        """Read every queued message: one readable fd may hold many events."""
        while not self._stopping.is_set():
            try:
                device = monitor.poll(timeout=0)
            except OSError as err:
                # ENOBUFS: the kernel dropped messages; the periodic resync covers them.
                if err.errno == errno.ENOBUFS:
                    log.warning("device events: netlink buffer overrun, some events were lost")
                    continue
                log.warning("device events: reading the monitor failed: %s", err)
                return
            if device is None:
                return
            try:
                event = event_from_device(device, self._mode or MODE_KERNEL)
            except Exception:  # a malformed message must not kill the reader
                log.exception("device events: cannot decode an event")
                continue
            try:
                on_event(event)
            except Exception:
                log.exception("device events: the event callback failed")

    def _maybe_switch(self) -> None:
        wanted = self._choose_mode()
        if wanted == self._mode:
            return
        try:
            new_monitor = self._open_monitor(wanted)
        except OSError as err:
            log.warning("device events: cannot open a %s monitor: %s", wanted, err)
            return
        log.info("device events: udevd %s, switching from %s to %s uevents",
                 "started" if wanted == MODE_UDEV else "stopped", self._mode, wanted)
        with self._lock:
            self._monitor = new_monitor
            self._mode = wanted


def _now() -> float:
    return time.monotonic()
