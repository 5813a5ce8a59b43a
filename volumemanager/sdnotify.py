"""The systemd notify protocol (sd_notify(3)), hand-written.

Why not a library: `systemd-python` needs libsystemd-dev and a compiler,
`sdnotify` swallows every error, and the protocol is one datagram of
newline-separated `KEY=VALUE` lines to the socket named by `$NOTIFY_SOCKET`.

Design points:
* Without `$NOTIFY_SOCKET` (not started by systemd with `Type=notify`) every
  call is a no-op returning False, so the daemon calls it unconditionally.
* A dangling or refusing socket never raises: systemd going away must not
  take the volume manager (and so the pods' mounts) down. It is logged once.
* Watchdog pings are *not* sent by a timer thread: the reconciler loop calls
  `watchdog_ping_if_due()` after a pass, so a wedged reconciler stops pinging
  and systemd restarts it. This module only tells it when a ping is due.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

# Ping at half of WatchdogSec, as sd_watchdog_enabled(3) recommends: one
# slow pass must not be enough for systemd to consider us hung.
WATCHDOG_PING_FRACTION = 0.5


def _socket_address(raw: str) -> str | None:
    """Turn `$NOTIFY_SOCKET` into an AF_UNIX address (None: unsupported kind)."""
    if raw.startswith("@"):
        return "\0" + raw[1:]  # Linux abstract namespace
    if raw.startswith("/"):
        return raw
    # vsock:... and other transports newer systemd versions may hand out.
    return None


def parse_watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings, or None when the watchdog is off.

    `WATCHDOG_USEC` is systemd's WatchdogSec in microseconds; `WATCHDOG_PID`,
    when set, names the process the watchdog is meant for (a child that
    inherited the environment must not ping on the parent's behalf).
    """
    usec_raw = env.get("WATCHDOG_USEC", "").strip()
    if not usec_raw:
        return None
    pid_raw = env.get("WATCHDOG_PID", "").strip()
    if pid_raw:
        try:
            if int(pid_raw) != pid:
                return None
        except ValueError:
            log.warning("ignoring watchdog: WATCHDOG_PID=%r is not a PID", pid_raw)
            return None
    try:
        usec = int(usec_raw)
    except ValueError:
        log.warning("ignoring watchdog: WATCHDOG_USEC=%r is not an integer", usec_raw)
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 * WATCHDOG_PING_FRACTION


class SystemdNotifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING to systemd, or nothing without it.

    The environment is read once, at construction (pass `environ` to test);
    the socket is opened per message, as the datagrams are rare and this
    survives systemd re-creating its notify socket.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        self._pid = os.getpid() if pid is None else pid
        raw = env.get("NOTIFY_SOCKET", "")
        self._raw_socket = raw
        self._address = _socket_address(raw) if raw else None
        self._watchdog_interval = parse_watchdog_interval(env, self._pid)
        self._last_ping: float | None = None
        self._warned = False
        self._lock = threading.Lock()
        if raw and self._address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket; systemd notifications disabled", raw)

    @property
    def enabled(self) -> bool:
        """True when a notify socket was given (we run under Type=notify)."""
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram made of `lines`; True when it was delivered."""
        if self._address is None or not lines:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block: this runs on the reconciler's thread, and a receiver that does
                # not read (a busy or stuck systemd) must cost a dropped message, not a wedged
                # reconciler. The next status or ping replaces a dropped one.
                sock.sendto(payload, socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            with self._lock:
                first = not self._warned
                self._warned = True
            if first:
                log.warning(
                    "cannot notify systemd via NOTIFY_SOCKET=%s: %s (further failures are not logged)",
                    self._raw_socket,
                    exc,
                )
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: state reconstructed and first reconcile pass done."""
        lines = ["READY=1"]
        if status:
            lines.append("STATUS=" + _one_line(status))
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        """STATUS=...: the one-line summary `systemctl status` shows."""
        return self.notify("STATUS=" + _one_line(text))

    def reloading(self) -> bool:
        """RELOADING=1 (on SIGHUP); send `ready()` once the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """STOPPING=1: on SIGTERM/SIGINT, before the loop exits."""
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WatchdogSec), None without a watchdog."""
        return self._watchdog_interval

    def watchdog_due(self, now: float | None = None) -> bool:
        """True when the watchdog is on and the last ping is an interval old.

        `now` is a `time.monotonic()` value; the first call is always due.
        """
        interval = self._watchdog_interval
        if interval is None:
            return False
        if now is None:
            now = time.monotonic()
        last = self._last_ping
        return last is None or now - last >= interval

    def watchdog_ping(self, now: float | None = None) -> bool:
        """WATCHDOG=1, and remember when (for `watchdog_due`)."""
        self._last_ping = time.monotonic() if now is None else now
        return self.notify("WATCHDOG=1")

    def watchdog_ping_if_due(self, now: float | None = None) -> bool:
        """Ping when due; call it from the reconciler loop after each pass."""
        if now is None:
            now = time.monotonic()
        if not self.watchdog_due(now):
            return False
        return self.watchdog_ping(now)


def _one_line(text: str) -> str:
    """STATUS must stay one line: a newline would start a new KEY=VALUE."""
    return " ".join(text.splitlines()).strip()
