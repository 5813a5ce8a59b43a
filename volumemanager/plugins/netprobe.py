"""Is an NFS server worth calling ``mount.nfs`` for? A fast, bounded pre-check.

``mount.nfs`` against an unreachable server retries for minutes (``retry=2`` minutes for a
foreground mount) and cannot be interrupted once it is in the kernel. A pre-check that fails in
milliseconds for the common cases turns that into a clear, retryable error instead:

1. resolve the name (bounded: a dead resolver can hang ``getaddrinfo`` for ~10 s);
2. ``connect()`` a UDP socket to the address: no packet is sent, but the kernel does the route
   lookup, so "no route to host" / "network unreachable" come back in microseconds;
3. a TCP connect to the NFS port with a short timeout (ECONNREFUSED = nothing listening);
4. an RPC NULL call to the NFS program over that connection: a server whose kernel still
   completes TCP handshakes but whose nfsd is wedged accepts the connection and then never
   answers; the NULL call notices that within the same deadline.

Every failure is a ``TransientError`` with code ``NFS_UNREACHABLE``: nothing was started, and the
reconciler retries with backoff. The whole check never takes longer than ``timeout``.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

from operation_executor.errors import TransientError
from volumemanager.bounded_io import BoundedIOTimeout, run_bounded

NFS_PORT = 2049

#: Total budget of one reachability check. A healthy server on a LAN answers the TCP handshake
#: and a NULL call in milliseconds; 3 s still covers a loaded server and one lost SYN
#: (the first SYN retransmit is at 1 s), yet keeps a dead server from stalling a mount attempt.
NFS_CONNECT_TIMEOUT = 3.0

#: ONC RPC numbers (RFC 5531) for the NULL procedure of the NFS program.
RPC_NFS_PROGRAM = 100003
RPC_NFS_VERSION = 4  # any reply (even PROG_MISMATCH from a v3-only server) proves it is alive
RPC_CALL = 0
RPC_REPLY = 1
RPC_VERSION = 2
AUTH_NONE = 0

UNREACHABLE = "NFS_UNREACHABLE"

_ERRNO_REASON = {
    errno.ECONNREFUSED: "connection refused (nothing listens on that port)",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network is unreachable",
    errno.ETIMEDOUT: "connection timed out",
    errno.ECONNRESET: "connection reset by the server",
    errno.EADDRNOTAVAIL: "address not available",
}


def _reason(err: OSError) -> str:
    return _ERRNO_REASON.get(err.errno or 0) or (err.strerror or str(err))


def _unreachable(server: str, port: int, reason: str) -> TransientError:
    return TransientError(f"NFS server {server} port {port} is unreachable: {reason}", code=UNREACHABLE)


def _resolve(server: str, port: int, timeout: float) -> list[tuple[int, tuple]]:
    host = server[1:-1] if server.startswith("[") and server.endswith("]") else server
    try:
        infos = run_bounded(
            lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
            timeout,
            f"resolving {host}",
        )
    except BoundedIOTimeout:
        raise _unreachable(server, port, f"name resolution did not finish within {timeout:g}s") from None
    except socket.gaierror as err:
        raise _unreachable(server, port, f"cannot resolve the name: {err.strerror}") from None
    seen: list[tuple[int, tuple]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, sockaddr) not in seen:
            seen.append((family, sockaddr))
    if not seen:
        raise _unreachable(server, port, "the name has no IPv4 or IPv6 address")
    return seen


def _route_check(family: int, sockaddr: tuple) -> None:
    """Raise OSError when the kernel has no route to ``sockaddr`` (no packet leaves the host)."""
    with socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as udp:
        udp.connect(sockaddr)


def _rpc_null_call(xid: int) -> bytes:
    body = struct.pack(
        ">IIIIIIIIII",
        xid, RPC_CALL, RPC_VERSION, RPC_NFS_PROGRAM, RPC_NFS_VERSION, 0,  # proc 0 = NULL
        AUTH_NONE, 0,  # credential
        AUTH_NONE, 0,  # verifier
    )
    return struct.pack(">I", 0x80000000 | len(body)) + body  # record mark: last fragment


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = b""
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout()
        sock.settimeout(remaining)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed by the server")
        buf += chunk
    return buf


def _rpc_ping(sock: socket.socket, deadline: float) -> None:
    """Send an RPC NULL call and wait for any well-formed reply with our xid."""
    xid = int.from_bytes(os.urandom(4), "big")
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    sock.sendall(_rpc_null_call(xid))
    header = _recv_exact(sock, 12, deadline)  # record mark, xid, msg_type
    _mark, reply_xid, msg_type = struct.unpack(">III", header)
    if reply_xid != xid or msg_type != RPC_REPLY:
        raise ConnectionResetError(errno.EPROTO, "the server's answer is not an RPC reply to our call")


def check_reachable(
    server: str,
    port: int = NFS_PORT,
    timeout: float = NFS_CONNECT_TIMEOUT,
    rpc_probe: bool = True,
) -> str:
    """Return the IP address that answered; raise ``TransientError(code="NFS_UNREACHABLE")``
    with the reason otherwise. Never takes (much) longer than ``timeout`` seconds.

    ``rpc_probe=False`` stops after the TCP handshake (for servers on non-NFS ports in tests,
    or firewalls that only pass the handshake)."""
    deadline = time.monotonic() + timeout
    addresses = _resolve(server, port, timeout)
    last_reason = "no address answered"
    for family, sockaddr in addresses:
        ip = sockaddr[0]
        try:
            _route_check(family, sockaddr)
        except OSError as err:
            last_reason = f"{ip}: {_reason(err)}"
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            last_reason = f"{ip}: no answer within {timeout:g}s"
            break
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(remaining)
            try:
                sock.connect(sockaddr)
            except socket.timeout:
                last_reason = f"{ip}: TCP connect got no answer within {timeout:g}s"
                continue
            except OSError as err:
                last_reason = f"{ip}: {_reason(err)}"
                continue
            if not rpc_probe:
                return ip
            try:
                _rpc_ping(sock, deadline)
                return ip
            except socket.timeout:
                last_reason = (f"{ip}: the server accepted the connection but did not answer "
                               f"an RPC NULL call within {timeout:g}s (server hung?)")
            except OSError as err:
                last_reason = f"{ip}: RPC NULL call failed: {_reason(err)}"
        finally:
            sock.close()
    raise _unreachable(server, port, last_reason)
