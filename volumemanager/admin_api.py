"""The daemon's admin API: newline-delimited JSON over a unix socket (mode 0600).

One request per connection: ``{"method": "status"}`` -> ``{"ok": true, "result": ...}``.
Peers are checked with SO_PEERCRED: only root (or the daemon's own user) may ask, because the
answers describe every mount on the node.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

# A request is one short JSON line; anything longer is not ours.
MAX_REQUEST_BYTES = 64 * 1024
# `wait` may hold a connection this long at most, whatever the client asks.
MAX_WAIT_SECONDS = 24 * 3600
CONNECT_TIMEOUT_SECONDS = 2.0
# The listen backlog. socketserver's default of 5 made a burst of clients fail: with a
# timeout set, a unix-socket connect to a full backlog fails at once with EAGAIN instead of
# waiting. The kernel caps this at net.core.somaxconn.
LISTEN_BACKLOG = max(128, socket.SOMAXCONN)
# How long the server waits for a client's request line. A client that connects and says
# nothing must not hold a handler thread forever.
REQUEST_READ_TIMEOUT_SECONDS = 10.0
# The client's back-off while the server's backlog is full (EAGAIN on connect): doubling from
# the first value to the cap, within the call's connect timeout.
CONNECT_RETRY_INITIAL_SECONDS = 0.005
CONNECT_RETRY_MAX_SECONDS = 0.1
# The code the server puts in a denial, so that clients need not parse the message.
PERMISSION_DENIED_CODE = "permission_denied"
# Stopping: how often, and how many times, to wake serve_forever with an empty connection.
STOP_POKE_INTERVAL = 0.01
STOP_POKES = 100


class AdminError(Exception):
    pass


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class _Handler(socketserver.StreamRequestHandler):
    # Applies to reading the request line only; cleared before the method runs (``wait``
    # legitimately holds the connection for as long as the client asked).
    timeout = REQUEST_READ_TIMEOUT_SECONDS

    def handle(self) -> None:
        server: AdminServer = self.server  # type: ignore[assignment]
        try:
            uid = peer_uid(self.connection)
        except OSError:
            return
        # Read the request before answering anything, even a denial: a server that replies and
        # closes while the client is still sending makes the client's write fail with EPIPE (or
        # its read with ECONNRESET) instead of reading the denial.
        try:
            line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
        except OSError:  # the read timed out or the peer went away
            return
        if uid not in (0, os.getuid()):
            self._send({"ok": False, "code": PERMISSION_DENIED_CODE,
                        "error": "permission denied: the admin socket answers root only"})
            return
        if len(line) > MAX_REQUEST_BYTES:
            self._send({"ok": False, "error": "request too long"})
            return
        try:
            self.connection.settimeout(None)
        except OSError:
            return
        try:
            req = json.loads(line or b"{}")
            method = req.get("method")
            handler = server.methods.get(method)
            if handler is None:
                raise AdminError(f"unknown method {method!r}")
            result = handler(**(req.get("params") or {}))
            self._send({"ok": True, "result": result})
        except AdminError as e:
            self._send({"ok": False, "error": str(e)})
        except (ValueError, TypeError) as e:
            self._send({"ok": False, "error": f"bad request: {e}"})
        except Exception as e:  # noqa: BLE001
            log.exception("admin request failed")
            self._send({"ok": False, "error": f"internal error: {type(e).__name__}"})

    def _send(self, obj: Any) -> None:
        try:
            self.wfile.write(json.dumps(obj, default=str).encode() + b"\n")
        except OSError:
            pass


class AdminServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, path: str, methods: dict[str, Callable[..., Any]]) -> None:
        self.methods = methods
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        if os.path.lexists(path):
            if _socket_answers(path):
                raise AdminError(f"another daemon is already listening on {path}")
            os.unlink(path)
        old = os.umask(0o177)
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="vm-admin", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        # serve_forever looks at the shutdown flag only between select() calls (every half
        # second): poke it with empty connections so that stopping takes milliseconds.
        poker = threading.Thread(target=self._poke_until_stopped, name="vm-admin-stop", daemon=True)
        poker.start()
        self.shutdown()
        poker.join(timeout=1)
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


    def _poke_until_stopped(self) -> None:
        thread = self._thread
        for _ in range(STOP_POKES):
            if thread is None or not thread.is_alive():
                return
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(0.1)
                    s.connect(self.path)
            except OSError:
                pass
            time.sleep(STOP_POKE_INTERVAL)


def _socket_answers(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class DaemonUnavailable(Exception):
    """No daemon answers on the socket: it is missing, refuses connections, or hangs up
    (the CLI then reads the disk, or reports "no daemon answered")."""


class DaemonTimeout(DaemonUnavailable):
    """Something listens on the socket but did not answer within the timeout."""


class PermissionDenied(AdminError):
    """This user may not ask the daemon: EACCES on the socket, or the daemon's own denial.
    Not a DaemonUnavailable: a daemon may well be running, and falling back to reading the
    disk would present a partial picture as the answer."""


def _connect(s: socket.socket, path: str, timeout: float) -> None:
    """Connect, retrying while the server's backlog is full (EAGAIN) until ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = CONNECT_RETRY_INITIAL_SECONDS
    while True:
        try:
            s.connect(path)
            return
        except FileNotFoundError as e:
            raise DaemonUnavailable(f"no daemon answers on {path}: the socket does not exist") from e
        except ConnectionRefusedError as e:
            raise DaemonUnavailable(f"no daemon answers on {path}: connection refused") from e
        except PermissionError as e:
            raise PermissionDenied(f"permission denied on {path}: the admin socket answers root only") from e
        except BlockingIOError:
            pass  # EAGAIN: the backlog is full right now
        except socket.timeout as e:
            raise DaemonTimeout(f"the daemon on {path} did not accept the connection within {timeout:g}s") from e
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DaemonTimeout(f"the daemon on {path} did not accept the connection within {timeout:g}s "
                                "(its backlog stayed full)")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, CONNECT_RETRY_MAX_SECONDS)


def call(path: str, method: str, params: dict[str, Any] | None = None, timeout: float | None = 30.0) -> Any:
    """Ask the daemon on ``path``; ``timeout`` bounds the wait for its answer.

    Raises ``DaemonUnavailable`` (no daemon; ``DaemonTimeout`` when it does not answer in
    time), ``PermissionDenied``, or ``AdminError`` with the daemon's error message."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(CONNECT_TIMEOUT_SECONDS)
    try:
        _connect(s, path, CONNECT_TIMEOUT_SECONDS)
        s.settimeout(timeout)
        buf = b""
        try:
            s.sendall(json.dumps({"method": method, "params": params or {}}).encode() + b"\n")
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
        except socket.timeout as e:
            raise DaemonTimeout(f"the daemon on {path} did not answer {method!r} within {timeout:g}s") from e
        except (BrokenPipeError, ConnectionResetError) as e:
            if not buf:
                raise DaemonUnavailable(f"the daemon on {path} closed the connection: {e.strerror}") from e
    finally:
        s.close()
    if not buf:
        raise DaemonUnavailable(f"the daemon on {path} closed the connection")
    try:
        resp = json.loads(buf)
    except ValueError as e:
        raise AdminError(f"the daemon on {path} sent a bad answer: {e}") from None
    if not resp.get("ok"):
        error = str(resp.get("error", "unknown error"))
        if resp.get("code") == PERMISSION_DENIED_CODE or error.startswith("permission denied"):
            raise PermissionDenied(f"{error} ({path})")
        raise AdminError(error)
    return resp.get("result")
