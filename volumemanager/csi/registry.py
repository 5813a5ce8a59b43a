"""The registered CSI drivers of this node, and one cached client per driver endpoint.

Drivers come and go at run time (a registration socket appears, a driver restarts), so the
registry is the single place that knows which driver answers where. Volumes waiting for a
driver subscribe to changes to be woken as soon as it registers.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

if TYPE_CHECKING:  # the client imports gRPC: only when a driver is dialled
    from volumemanager.csi.client import CSINodeClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriverInfo:
    """What we learned about a driver when it registered."""

    name: str
    endpoint: str
    node_id: str
    capabilities: frozenset[str]
    max_volumes: int
    source: Literal["registration", "static"]
    registered_at: float
    socket_path: str | None = None  # the registration socket, for source == "registration"
    # The Controller service, when the driver has one: where it answers (its own socket, or
    # the one given by --csi-controller NAME=...) and what it can do.
    controller_endpoint: str | None = None
    controller_capabilities: frozenset[str] = frozenset()
    plugin_capabilities: frozenset[str] = frozenset()
    topology: tuple[tuple[str, str], ...] = ()  # NodeGetInfo accessible_topology segments
    controller_error: str | None = None  # why the Controller service could not be asked

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def controller_has(self, capability: str) -> bool:
        return self.controller_endpoint is not None and capability in self.controller_capabilities


class DriverRegistry:
    """Thread-safe map of driver name -> ``DriverInfo``.

    Clients are created lazily and cached per endpoint; re-adding or removing a driver closes
    and drops its client so that a restarted driver (new socket inode, maybe new endpoint) is
    dialled afresh instead of through a channel stuck in backoff on the old one.
    Subscribers are called with the driver name after every add and remove, outside the lock.
    """

    def __init__(self, client_factory: Callable[[str], CSINodeClient] | None = None) -> None:
        self._lock = threading.Lock()
        self._drivers: dict[str, DriverInfo] = {}
        self._clients: dict[str, CSINodeClient] = {}
        self._subscribers: list[Callable[[str], None]] = []
        self._client_factory = client_factory
        self._controller_clients: dict[str, Any] = {}
        self._controller_factory: Callable[[str], Any] | None = None
        # --csi-controller NAME=unix:///path: a Controller service on a socket of its own.
        self.controller_overrides: dict[str, str] = {}

    def set_controller_factory(self, factory: Callable[[str], Any]) -> None:
        """How controller clients are made (the daemon passes its timeout and metrics)."""
        self._controller_factory = factory

    def controller_client(self, name: str) -> Any:
        """The Controller-service client of a registered driver. Raises ``KeyError`` naming the
        driver when it is not registered or serves no Controller service."""
        with self._lock:
            info = self._drivers.get(name)
            if info is None:
                raise KeyError(f"CSI driver {name!r} is not registered")
            if info.controller_endpoint is None:
                raise KeyError(f"CSI driver {name!r} serves no Controller service")
            client = self._controller_clients.get(info.controller_endpoint)
            if client is None:
                if self._controller_factory is None:
                    from volumemanager.csi.controller_client import CSIControllerClient

                    self._controller_factory = CSIControllerClient
                client = self._controller_factory(info.controller_endpoint)
                self._controller_clients[info.controller_endpoint] = client
            return client

    def add(self, info: DriverInfo) -> None:
        with self._lock:
            old = self._drivers.get(info.name)
            self._drivers[info.name] = info
            for ep in {old.controller_endpoint if old is not None else None, info.controller_endpoint} - {None}:
                stale_controller = self._controller_clients.pop(ep, None)  # type: ignore[arg-type]
                if stale_controller is not None:
                    stale_controller.close()
            stale = self._drop_client_locked(old.endpoint) if old is not None else None
            stale_new = self._drop_client_locked(info.endpoint)
        for client in (stale, stale_new):
            if client is not None:
                client.close()
        log.info(
            "CSI driver %s registered (%s) at %s, node id %s, capabilities %s",
            info.name, info.source, info.endpoint, info.node_id, ",".join(sorted(info.capabilities)) or "-",
        )
        self._notify(info.name)

    def remove(self, name: str) -> DriverInfo | None:
        with self._lock:
            info = self._drivers.pop(name, None)
            client = self._drop_client_locked(info.endpoint) if info is not None else None
        if client is not None:
            client.close()
        if info is not None:
            log.info("CSI driver %s deregistered", name)
            self._notify(name)
        return info

    def get(self, name: str) -> DriverInfo | None:
        with self._lock:
            return self._drivers.get(name)

    def list(self) -> list[DriverInfo]:
        with self._lock:
            return sorted(self._drivers.values(), key=lambda d: d.name)

    def client(self, name: str) -> CSINodeClient:
        """The client for a registered driver. Raises ``KeyError`` naming the driver when it is
        not registered (callers turn that into a WaitingError)."""
        with self._lock:
            info = self._drivers.get(name)
            if info is None:
                raise KeyError(f"CSI driver {name!r} is not registered")
            client = self._clients.get(info.endpoint)
            if client is None:
                if self._client_factory is None:
                    from volumemanager.csi.client import CSINodeClient

                    self._client_factory = CSINodeClient
                client = self._client_factory(info.endpoint)
                self._clients[info.endpoint] = client
            return client

    def subscribe(self, callback: Callable[[str], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def close(self) -> None:
        """Close every cached client (the daemon calls this on shutdown)."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
            clients += list(self._controller_clients.values())
            self._controller_clients = {}
        for client in clients:
            client.close()

    def _drop_client_locked(self, endpoint: str) -> CSINodeClient | None:
        controller = self._controller_clients.pop(endpoint, None)
        if controller is not None:
            controller.close()
        return self._clients.pop(endpoint, None)

    def _notify(self, name: str) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(name)
            except Exception:  # a broken subscriber must not break registration
                log.exception("CSI driver registry subscriber failed for %s", name)
