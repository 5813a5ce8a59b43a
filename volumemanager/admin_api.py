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
    def handle(self) -> None:
        server: AdminServer = self.server  # type: ignore[assignment]
        try:
            uid = peer_uid(self.connection)
        except OSError:
            return
        if uid not in (0, os.getuid()):
            self._send({"ok": False, "error": "permission denied: the admin socket answers root only"})
            return
        line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
        if len(line) > MAX_REQUEST_BYTES:
            self._send({"ok": False, "error": "request too long"})
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
    """No daemon answers on the socket (the CLI then reads the disk)."""


def call(path: str, method: str, params: dict[str, Any] | None = None, timeout: float | None = 30.0) -> Any:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(CONNECT_TIMEOUT_SECONDS)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, socket.timeout, PermissionError) as e:
            raise DaemonUnavailable(f"no daemon answers on {path}: {e}") from None
        s.settimeout(timeout)
        s.sendall(json.dumps({"method": method, "params": params or {}}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    if not buf:
        raise DaemonUnavailable(f"the daemon on {path} closed the connection")
    resp = json.loads(buf)
    if not resp.get("ok"):
        raise AdminError(resp.get("error", "unknown error"))
    return resp.get("result")
