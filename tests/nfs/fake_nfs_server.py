"""A stand-in NFS server for reachability tests: it speaks just enough ONC RPC to answer a NULL
call (``--mode rpc``), or accepts connections and never answers (``--mode hang``), the way a
server with a wedged nfsd behaves. Run inside a test network namespace with ``ip netns exec``;
prints ``READY`` once listening. Killed by PID by the test."""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import threading
import time


def serve_rpc(conn: socket.socket) -> None:
    with conn:
        while True:
            header = conn.recv(4, socket.MSG_WAITALL)
            if len(header) < 4:
                return
            length = struct.unpack(">I", header)[0] & 0x7FFFFFFF
            body = conn.recv(length, socket.MSG_WAITALL)
            if len(body) < 4:
                return
            xid = body[:4]
            # REPLY, MSG_ACCEPTED, verifier AUTH_NONE (0, 0), SUCCESS; NULL has no result body.
            reply = xid + struct.pack(">IIIII", 1, 0, 0, 0, 0)
            conn.sendall(struct.pack(">I", 0x80000000 | len(reply)) + reply)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=2049)
    ap.add_argument("--mode", choices=["rpc", "hang"], default="rpc")
    args = ap.parse_args()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.address, args.port))
    srv.listen(16)
    print("READY", flush=True)
    held = []
    while True:
        conn, _ = srv.accept()
        if args.mode == "rpc":
            threading.Thread(target=serve_rpc, args=(conn,), daemon=True).start()
        else:
            held.append(conn)  # accepted, never read, never answered


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
