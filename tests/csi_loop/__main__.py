"""``python -m tests.csi_loop --endpoint unix:///path/csi.sock --driver-name NAME --state-dir DIR
[--registration-dir PLUGINS_REGISTRY_DIR] [--no-stage] [--node-id NODE]
[--controller [--capacity BYTES] [--attach-required] [--topology-key KEY --topology-value VALUE]]``

Serves CSI Identity + Node on the endpoint (and Controller with ``--controller``, on the same
socket) and, with ``--registration-dir``, the kubelet plugin-registration service on
``<registration-dir>/<driver-name>-reg.sock``. SIGTERM/SIGINT
stop it cleanly: sockets are removed, mounts and loop devices stay (like a real driver).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from concurrent import futures

import grpc

from tests.csi_loop.controller import LoopController
from tests.csi_loop.driver import Abort, LoopDriver, add_csi_services, add_registration_service, parse_size

# Worker threads: enough that a call stuck in an injected sleep does not block the others.
MAX_WORKERS = 8
# How long in-flight calls may finish after SIGTERM before the server cuts them off.
SHUTDOWN_GRACE_SECONDS = 2.0


def _socket_path(endpoint: str) -> str:
    path = endpoint[len("unix://"):] if endpoint.startswith("unix://") else endpoint
    if not path.startswith("/"):
        sys.exit(f"csi-loop: --endpoint {endpoint!r} must be unix:///absolute/path")
    return path


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.csi_loop")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--driver-name", default="csi-loop.test")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--registration-dir")
    p.add_argument("--no-stage", action="store_true")
    p.add_argument("--node-id", default=socket.gethostname())
    p.add_argument(
        "--csi-start-delay", type=float, default=0.0,
        help="serve the registration socket first and the CSI endpoint this many seconds later "
        "(the race a CO must handle: the registrar sidecar often starts before the driver)",
    )
    # Knobs for registration faults a real registrar can send: a wrong plugin type or no
    # supported CSI version.
    p.add_argument("--registration-type", default="CSIPlugin")
    p.add_argument("--supported-versions", default="1.0.0", help="comma-separated")
    # The Controller service (see tests/csi_loop/controller.py).
    p.add_argument("--controller", action="store_true", help="serve the Controller service too")
    p.add_argument("--capacity", default="10Gi", help="the volume pool's size (sparse files), e.g. 1Gi")
    p.add_argument(
        "--attach-required", action="store_true",
        help="advertise PUBLISH_UNPUBLISH_VOLUME: ControllerPublishVolume attaches the loop device "
        "and NodeStageVolume refuses a volume not published to this node",
    )
    p.add_argument(
        "--volume-mount-group", action="store_true",
        help="advertise VOLUME_MOUNT_GROUP: the volume_mount_group of NodeStage/NodePublish becomes the group "
             "(with setgid) of the volume's root",
    )
    p.add_argument("--topology-key", help="the node's topology segment key (default with --controller: topology.<driver-name>/node)")
    p.add_argument("--topology-value", help="its value (default: the node id)")
    args = p.parse_args(argv)
    if args.attach_required and not args.controller:
        p.error("--attach-required needs --controller")
    try:
        capacity = parse_size(args.capacity)
    except Abort:
        p.error(f"--capacity {args.capacity!r} is not a size (bytes, or with K/M/G/Ki/Mi/Gi)")
    topology: dict[str, str] = {}
    if args.controller or args.topology_key:
        topology = {args.topology_key or f"topology.{args.driver_name}/node": args.topology_value or args.node_id}

    sock = _socket_path(args.endpoint)
    os.makedirs(args.state_dir, exist_ok=True)
    os.makedirs(os.path.dirname(sock), exist_ok=True)
    driver = LoopDriver(
        args.driver_name, args.state_dir, args.node_id, not args.no_stage, sock,
        registration_type=args.registration_type,
        supported_versions=tuple(v for v in args.supported_versions.split(",") if v),
        controller=args.controller, attach_required=args.attach_required, topology=topology,
        volume_mount_group=args.volume_mount_group,
    )
    controller = None
    if args.controller:
        controller = LoopController(driver, capacity)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    servers: list[tuple[grpc.Server, str]] = []

    def serve_csi() -> None:
        csi_server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_WORKERS))
        add_csi_services(csi_server, driver, controller)
        _unlink(sock)  # a stale socket of a killed predecessor
        csi_server.add_insecure_port(f"unix://{sock}")
        csi_server.start()
        servers.append((csi_server, sock))

    if not args.csi_start_delay:
        serve_csi()

    if args.registration_dir:
        os.makedirs(args.registration_dir, exist_ok=True)
        reg_sock = os.path.join(args.registration_dir, f"{args.driver_name}-reg.sock")
        reg_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        add_registration_service(reg_server, driver)
        _unlink(reg_sock)
        reg_server.add_insecure_port(f"unix://{reg_sock}")
        reg_server.start()
        servers.append((reg_server, reg_sock))

    if args.csi_start_delay and not stop.wait(args.csi_start_delay):
        serve_csi()
    print(f"csi-loop: {args.driver_name} serving on {sock} (pid {os.getpid()})", file=sys.stderr, flush=True)
    stop.wait()
    # Registration socket first: the CO deregisters before the endpoint disappears.
    for server, path in sorted(servers, key=lambda sp: sp[1] == sock):
        _unlink(path)
        server.stop(SHUTDOWN_GRACE_SECONDS).wait()
    print("csi-loop: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
