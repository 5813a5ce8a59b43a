"""The gRPC channel plumbing that the CSI Node and Controller clients share.

A client holds one channel to one driver socket, opened on its first call (so building a
client costs no connection and no gRPC thread until the driver is actually used) and reused
for every call until ``close()``. The channel carries two stubs: the service the client is
for (Node or Controller) and Identity, which both need.

The error mapping and what is observed around a call differ between the two clients (the
kubelet's rules for the node, the sidecars' for the controller), so ``_call`` stays theirs.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

import grpc

from volumemanager._proto.csi.v1 import csi_pb2_grpc
from volumemanager.csi.endpoint import socket_path_of

# kubelet runs every CSI operation under csiTimeout = 2 minutes (pkg/volume/csi/csi_plugin.go):
# NodeStage may format a large disk, so anything shorter turns slow-but-fine into "uncertain".
DEFAULT_TIMEOUT_SECONDS = 120.0
# Capability and identity calls are cheap; a driver that does not answer them quickly is not
# ready, and registration retries them, so they get a short deadline of their own.
DEFAULT_INFO_TIMEOUT_SECONDS = 10.0
# kubelet dials drivers with authority "localhost" (csi_client.go newV1NodeClient); some drivers
# built on grpc-go reject the default authority of a unix target, so we do the same.
DEFAULT_AUTHORITY = "localhost"

ServiceStub = TypeVar("ServiceStub")
_Self = TypeVar("_Self", bound="CSIChannel")


class CSIChannel(Generic[ServiceStub]):
    """One lazily opened gRPC channel to ``endpoint`` with the service and Identity stubs.

    A subclass names its service in ``service_stub`` (``csi_pb2_grpc.NodeStub``, ...).
    ``timeout`` is the deadline of the volume operations; ``info_timeout`` that of identity
    and capability calls (never longer than ``timeout``).
    """

    service_stub: Callable[[grpc.Channel], ServiceStub]

    def __init__(self, endpoint: str, timeout: float, info_timeout: float) -> None:
        self.endpoint = endpoint
        self.socket_path = socket_path_of(endpoint)
        self.timeout = timeout
        self.info_timeout = min(info_timeout, timeout)
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._service: ServiceStub | None = None
        self._identity: csi_pb2_grpc.IdentityStub | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint!r})"

    def _stubs(self) -> tuple[ServiceStub, csi_pb2_grpc.IdentityStub]:
        """The service and Identity stubs, opening the channel on first use."""
        with self._lock:
            if self._channel is None:
                self._channel = grpc.insecure_channel(
                    f"unix://{self.socket_path}",
                    options=[("grpc.default_authority", DEFAULT_AUTHORITY)],
                )
                self._service = type(self).service_stub(self._channel)
                self._identity = csi_pb2_grpc.IdentityStub(self._channel)
            assert self._service is not None and self._identity is not None
            return self._service, self._identity

    def close(self) -> None:
        """Close the channel (a later call opens a new one)."""
        with self._lock:
            channel, self._channel = self._channel, None
            self._service = self._identity = None
        if channel is not None:
            channel.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
