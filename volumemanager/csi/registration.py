"""CSI driver discovery: the kubelet plugin-registration protocol, and statically given drivers.

Registration protocol (kubelet ``pluginmanager``): a driver (usually its node-driver-registrar
sidecar) creates a unix socket in ``plugins_registry/`` serving ``pluginregistration.Registration``.
We, playing kubelet, dial it, ``GetInfo`` (type ``CSIPlugin``, name, CSI endpoint, supported
versions), check the driver through its CSI endpoint (``NodeGetInfo``, ``NodeGetCapabilities``),
add it to the ``DriverRegistry`` and report back with ``NotifyRegistrationStatus``. The socket
going away deregisters the driver; a socket appearing again (driver restart) registers anew.

The watchdog thread only queues work: dialling and retrying happen on one worker thread per
socket, because a driver's CSI endpoint often comes up after its registration socket.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from operation_executor.errors import OperationError
from volumemanager.csi.endpoint import socket_path_of
from volumemanager.csi.registry import DriverInfo, DriverRegistry

if TYPE_CHECKING:
    from volumemanager._proto.pluginregistration.v1 import api_pb2, api_pb2_grpc

# gRPC (~80 ms of imports) is loaded by the first registration or static driver, not at
# start-up: watching an empty plugins_registry directory needs only inotify.

log = logging.getLogger(__name__)

CSI_PLUGIN_TYPE = "CSIPlugin"
# GetInfo / NotifyRegistrationStatus are trivial calls on a local socket; kubelet allows them
# seconds, not minutes. A registrar that does not answer in this time is retried.
REGISTRATION_CALL_TIMEOUT_SECONDS = 5.0
# NodeGetInfo / NodeGetCapabilities during registration: same reasoning.
DRIVER_INFO_TIMEOUT_SECONDS = 5.0
# Retry backoff while the registration socket or the CSI endpoint is not answering yet: start
# fast (sidecars usually win the race by milliseconds), cap low enough that a slow driver is
# picked up within seconds of being ready.
RETRY_INITIAL_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
# Give up on a registration socket nobody answers on (a stale socket of a dead driver) after
# this long; a new socket (driver restart) starts a new attempt.
RETRY_GIVE_UP_SECONDS = 300.0
# Static drivers (--csi-driver) have no socket event to retry on, so they are retried forever
# with this cap.
STATIC_RETRY_MAX_SECONDS = 10.0

_DRIVER_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-]{0,61}[A-Za-z0-9])?$")


class RegistrationError(Exception):
    """The registrar answered but cannot be accepted (wrong type, no supported version)."""


def supported_version(versions: list[str]) -> str | None:
    """The first version of the CSI 1.x line in ``versions`` ("1.0.0", "v1.0.0", "1.12"),
    or None. kubelet accepts any 1.x."""
    for v in versions:
        text = v.strip().lstrip("vV")
        major = text.split(".", 1)[0]
        if major == "1":
            return v
    return None


def parse_static_driver(value: str) -> tuple[str, str]:
    """``--csi-driver NAME=unix:///path/csi.sock`` -> ``(name, "unix:///path/csi.sock")``.

    Raises ``ValueError`` naming the value when it is not of that form."""
    name, sep, endpoint = value.partition("=")
    name, endpoint = name.strip(), endpoint.strip()
    if not sep or not name or not endpoint:
        raise ValueError(f"--csi-driver {value!r}: expected NAME=unix:///path/to/csi.sock")
    if not _DRIVER_NAME.match(name):
        raise ValueError(f"--csi-driver {value!r}: driver name {name!r} is not a valid CSI driver name")
    try:
        path = socket_path_of(endpoint)
    except ValueError as err:
        raise ValueError(f"--csi-driver {value!r}: {err}") from None
    return name, f"unix://{path}"


def probe_driver(
    registry: DriverRegistry,
    name: str,
    endpoint: str,
    source: str,
    socket_path: str | None = None,
    timeout: float = DRIVER_INFO_TIMEOUT_SECONDS,
) -> DriverInfo:
    """Ask the driver at ``endpoint`` who it is on this node and add it to ``registry``.

    Raises ``OperationError`` when the driver does not answer (the caller retries)."""
    from volumemanager.csi.client import CSINodeClient

    client = CSINodeClient(endpoint, timeout=timeout, info_timeout=timeout)
    try:
        node_info = client.node_get_info()
        capabilities = client.node_get_capabilities()
    finally:
        client.close()
    controller = probe_controller(endpoint, registry.controller_overrides.get(name), timeout)
    info = DriverInfo(
        name=name,
        endpoint=endpoint,
        node_id=node_info.node_id,
        capabilities=frozenset(capabilities),
        max_volumes=int(node_info.max_volumes_per_node),
        source=source,  # type: ignore[arg-type]
        registered_at=time.time(),
        socket_path=socket_path,
        topology=tuple(sorted(node_info.accessible_topology.segments.items())),
        **controller,
    )
    registry.add(info)
    return info


def probe_controller(endpoint: str, override: str | None, timeout: float) -> dict:
    """The DriverInfo fields of a driver's Controller service. With ``override``
    (``--csi-controller``) that endpoint is asked; else the driver's own socket, where the
    service exists only when GetPluginCapabilities says CONTROLLER_SERVICE. A driver without
    one (or whose Identity service does not answer that call) is a node-only driver, as before;
    the failure is kept for ``status``, never a reason to refuse the registration."""
    from operation_executor.errors import OperationError
    from volumemanager.csi.controller_client import CSIControllerClient

    target = override or endpoint
    client = CSIControllerClient(target, timeout=timeout, info_timeout=timeout)
    try:
        try:
            plugin_caps = frozenset(client.get_plugin_capabilities())
        except OperationError as e:
            if override is None:
                return {"controller_error": str(e)}
            plugin_caps = frozenset()
        if override is None and "CONTROLLER_SERVICE" not in plugin_caps:
            return {"plugin_capabilities": plugin_caps}
        try:
            caps = frozenset(client.controller_get_capabilities())
        except OperationError as e:
            log.warning("CSI driver at %s: ControllerGetCapabilities failed: %s", target, e)
            return {"plugin_capabilities": plugin_caps, "controller_error": str(e)}
        return {"plugin_capabilities": plugin_caps, "controller_endpoint": target, "controller_capabilities": caps}
    finally:
        client.close()


def _backoff(attempt: int, cap: float) -> float:
    return min(cap, RETRY_INITIAL_SECONDS * (2 ** min(attempt, 16)))


@dataclass
class _SocketWorker:
    path: str
    identity: tuple[int, int, int]  # (st_dev, st_ino, st_ctime_ns): inode numbers get reused
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    driver: str | None = None  # set once registered


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: PluginRegistrationWatcher) -> None:
        self._watcher = watcher

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._watcher._socket_added(os.fsdecode(event.src_path))

    def on_deleted(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._watcher._socket_removed(os.fsdecode(event.src_path))

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._watcher._socket_removed(os.fsdecode(event.src_path))
            self._watcher._socket_added(os.fsdecode(event.dest_path))


class PluginRegistrationWatcher:
    """Watches ``registry_dir`` for kubelet-style registration sockets (see the module doc)."""

    def __init__(self, registry_dir: str, registry: DriverRegistry) -> None:
        self.registry_dir = os.path.abspath(registry_dir)
        self.registry = registry
        self._lock = threading.Lock()
        self._workers: dict[str, _SocketWorker] = {}
        self._observer: Observer | None = None
        self._stopped = threading.Event()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        os.makedirs(self.registry_dir, mode=0o750, exist_ok=True)
        observer = Observer()
        observer.schedule(_Handler(self), self.registry_dir, recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        # Scan after the watch is in place so that no socket created in between is missed;
        # a socket seen twice is deduplicated by path and inode.
        for name in sorted(os.listdir(self.registry_dir)):
            self._socket_added(os.path.join(self.registry_dir, name))
        log.info("watching %s for CSI plugin registration sockets", self.registry_dir)

    def stop(self) -> None:
        """Stop watching and cancel pending registrations. Registered drivers stay registered:
        stopping the daemon must not look like drivers going away."""
        self._stopped.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            w.cancel.set()
        for w in workers:
            if w.thread is not None:
                w.thread.join(timeout=REGISTRATION_CALL_TIMEOUT_SECONDS + 1)

    # --- events ---------------------------------------------------------------------------

    def _socket_added(self, path: str) -> None:
        if self._stopped.is_set() or os.path.basename(path).startswith("."):
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            return
        with self._lock:
            current = self._workers.get(path)
            identity = (st.st_dev, st.st_ino, st.st_ctime_ns)
            if current is not None and current.identity == identity:
                return  # already registering or registered through this very socket
            if current is not None:
                current.cancel.set()  # the socket was replaced without us seeing the delete
            worker = _SocketWorker(path=path, identity=identity)
            worker.thread = threading.Thread(
                target=self._register, args=(worker,), name=f"csi-register-{os.path.basename(path)}", daemon=True
            )
            self._workers[path] = worker
        worker.thread.start()

    def _socket_removed(self, path: str) -> None:
        with self._lock:
            worker = self._workers.get(path)
            if worker is None:
                return
            # Events arrive in order: a socket re-created at once (driver restart) is
            # deregistered here and registered again by the create event that follows.
            del self._workers[path]
        worker.cancel.set()
        if worker.driver is not None:
            self._deregister(worker.driver, path)

    def _deregister(self, name: str, path: str) -> None:
        info = self.registry.get(name)
        if info is not None and info.socket_path == path:
            log.info("registration socket %s removed: deregistering CSI driver %s", path, name)
            self.registry.remove(name)

    # --- the protocol ---------------------------------------------------------------------

    def _register(self, worker: _SocketWorker) -> None:
        import grpc

        from volumemanager._proto.pluginregistration.v1 import api_pb2, api_pb2_grpc

        start = time.monotonic()
        attempt = 0
        last_error = ""
        while not worker.cancel.is_set():
            channel = grpc.insecure_channel(f"unix://{worker.path}", options=[("grpc.default_authority", "localhost")])
            try:
                stub = api_pb2_grpc.RegistrationStub(channel)
                try:
                    info = stub.GetInfo(api_pb2.InfoRequest(), timeout=REGISTRATION_CALL_TIMEOUT_SECONDS)
                except grpc.RpcError as err:
                    last_error = f"GetInfo on {worker.path}: {err.code().name}: {err.details()}"
                else:
                    try:
                        registered = self._accept(worker, info)
                    except RegistrationError as err:
                        log.error("CSI plugin registration through %s rejected: %s", worker.path, err)
                        self._notify(stub, worker.path, False, str(err))
                        return
                    except OperationError as err:
                        last_error = f"driver {info.name}: {err}"
                    else:
                        worker.driver = registered.name
                        if worker.cancel.is_set():
                            # The socket went away while we were registering through it.
                            self._deregister(registered.name, worker.path)
                            return
                        self._notify(stub, worker.path, True, "")
                        return
                if time.monotonic() - start > RETRY_GIVE_UP_SECONDS:
                    log.error("giving up CSI plugin registration through %s: %s", worker.path, last_error)
                    self._notify(stub, worker.path, False, last_error)
                    return
            finally:
                channel.close()
            delay = _backoff(attempt, RETRY_MAX_SECONDS)
            attempt += 1
            log.info("CSI plugin registration through %s not ready (%s); retrying in %.1fs", worker.path, last_error, delay)
            worker.cancel.wait(delay)

    def _accept(self, worker: _SocketWorker, info: api_pb2.PluginInfo) -> DriverInfo:
        if info.type != CSI_PLUGIN_TYPE:
            raise RegistrationError(f"plugin type {info.type!r} is not {CSI_PLUGIN_TYPE!r}")
        if not info.name:
            raise RegistrationError("plugin name is empty")
        if supported_version(list(info.supported_versions)) is None:
            raise RegistrationError(
                f"driver {info.name}: none of the versions {list(info.supported_versions)} is a CSI 1.x version"
            )
        raw_endpoint = info.endpoint or worker.path
        try:
            endpoint = f"unix://{socket_path_of(raw_endpoint)}"
        except ValueError as err:
            raise RegistrationError(f"driver {info.name}: {err}") from None
        return probe_driver(self.registry, info.name, endpoint, "registration", socket_path=worker.path)

    @staticmethod
    def _notify(stub: api_pb2_grpc.RegistrationStub, path: str, ok: bool, error: str) -> None:
        import grpc

        from volumemanager._proto.pluginregistration.v1 import api_pb2

        try:
            stub.NotifyRegistrationStatus(
                api_pb2.RegistrationStatus(plugin_registered=ok, error=error),
                timeout=REGISTRATION_CALL_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as err:
            log.warning("NotifyRegistrationStatus on %s failed: %s", path, err.code().name)


class StaticDriverRegistrar:
    """Registers a ``--csi-driver NAME=ENDPOINT`` driver: ``NodeGetInfo`` and
    ``NodeGetCapabilities`` retried in the background until the driver answers."""

    def __init__(self, registry: DriverRegistry, name: str, endpoint: str) -> None:
        self.registry = registry
        self.name = name
        self.endpoint = endpoint
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self.registered = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"csi-static-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout=DRIVER_INFO_TIMEOUT_SECONDS + 1)

    def _run(self) -> None:
        attempt = 0
        while not self._cancel.is_set():
            try:
                probe_driver(self.registry, self.name, self.endpoint, "static")
            except OperationError as err:
                delay = _backoff(attempt, STATIC_RETRY_MAX_SECONDS)
                attempt += 1
                log.info("static CSI driver %s at %s not answering (%s); retrying in %.1fs",
                         self.name, self.endpoint, err, delay)
                self._cancel.wait(delay)
            else:
                self.registered.set()
                return


def register_static_driver(registry: DriverRegistry, name: str, endpoint: str) -> StaticDriverRegistrar:
    """Start registering a ``--csi-driver`` driver in the background; returns the (started)
    registrar so the caller can ``stop()`` it or wait on ``registered``."""
    registrar = StaticDriverRegistrar(registry, name, endpoint)
    registrar.start()
    return registrar
