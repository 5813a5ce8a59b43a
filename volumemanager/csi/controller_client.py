"""A synchronous client for a CSI driver's Controller service (and the Identity calls that find it).

The error mapping is the CSI sidecars', not the kubelet's (external-provisioner ``checkError``):

* CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE, ABORTED, or anything that is not a gRPC status
  -> ``UncertainError`` ("in background"): the driver may still be creating or deleting, so the
  same request (same name) must be sent again before anything else is assumed;
* every other status -> ``FinalError``: the driver answered and nothing runs. That includes
  RESOURCE_EXHAUSTED, which the node client counts as uncertain: a provisioner retries it with
  backoff like any finished failure.

Every call carries the daemon's ``--csi-timeout`` deadline; identity and capability calls a
short one of their own. Requests hold secrets (``csi_secret`` fields) and are never logged
except through ``sanitize_request``.

New controller steps (ControllerPublish/Unpublish, ControllerExpandVolume, snapshots) are one
method each here, built on ``_controller_call``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import grpc
from google.protobuf.message import Message

from volumemanager._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from volumemanager.csi.channel import DEFAULT_INFO_TIMEOUT_SECONDS, DEFAULT_TIMEOUT_SECONDS, CSIChannel
from volumemanager.csi.client import sanitize_request, translate_error

log = logging.getLogger(__name__)

# external-provisioner checkError: these mean "the operation may still be in progress".
CONTROLLER_UNCERTAIN_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
    }
)

# Observer of every controller call: (method, gRPC status name or "OK", seconds). The daemon
# feeds csi_sidecar_operations_seconds from it.
CallObserver = Callable[[str, str, float], None]


def plugin_capability_name(value: int) -> str:
    enum = csi_pb2.PluginCapability.Service.Type
    return enum.Name(value) if value in enum.values() else f"UNKNOWN_{value}"


def controller_capability_name(value: int) -> str:
    enum = csi_pb2.ControllerServiceCapability.RPC.Type
    return enum.Name(value) if value in enum.values() else f"UNKNOWN_{value}"


@dataclass(frozen=True)
class CreatedVolume:
    """What CreateVolume answered: everything the PersistentVolume record needs."""

    volume_id: str
    capacity_bytes: int  # 0: the driver did not say (the spec: unknown)
    volume_context: dict[str, str] = field(default_factory=dict)
    accessible_topology: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class CreatedSnapshot:
    """What CreateSnapshot answered (``ready_to_use`` false: the same call again to follow it)."""

    snapshot_id: str
    source_volume_id: str
    size_bytes: int  # 0: the driver did not say
    creation_time: float | None  # seconds since the epoch
    ready_to_use: bool


@dataclass(frozen=True)
class ExpandedVolume:
    """What ControllerExpandVolume answered."""

    capacity_bytes: int  # 0: the driver did not say
    node_expansion_required: bool


class CSIControllerClient(CSIChannel[csi_pb2_grpc.ControllerStub]):
    """One gRPC channel to the endpoint serving a driver's Controller service."""

    service_stub = csi_pb2_grpc.ControllerStub

    def __init__(
        self,
        endpoint: str,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        info_timeout: float = DEFAULT_INFO_TIMEOUT_SECONDS,
        observer: CallObserver | None = None,
    ) -> None:
        super().__init__(endpoint, timeout, info_timeout)
        self.observer = observer

    # --- plumbing (the channel and its stubs: CSIChannel) ----------------------------------

    def _call(self, method: str, fn: Callable[..., Any], request: Message, timeout: float) -> Any:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("CSI %s on %s: %s", method, self.endpoint, sanitize_request(request))
        started = time.monotonic()
        code = "OK"
        try:
            return fn(request, timeout=timeout)
        except Exception as err:  # noqa: BLE001 - every failure is classified, none escapes raw
            mapped = translate_error(method, self.endpoint, err, CONTROLLER_UNCERTAIN_CODES)
            code = mapped.code or "UNKNOWN"
            raise mapped from None
        finally:
            if self.observer is not None:
                try:
                    self.observer(method, code, time.monotonic() - started)
                except Exception:  # noqa: BLE001 - metrics never break an operation
                    log.exception("CSI call observer failed")

    def _controller_call(self, method: str, request: Message, timeout: float | None = None) -> Any:
        controller, _ = self._stubs()
        return self._call(method, getattr(controller, method), request, timeout or self.timeout)

    # --- identity -------------------------------------------------------------------------

    def get_plugin_capabilities(self) -> set[str]:
        """Names of the plugin's service capabilities, e.g. ``{"CONTROLLER_SERVICE"}``."""
        _, identity = self._stubs()
        resp = self._call("GetPluginCapabilities", identity.GetPluginCapabilities,
                          csi_pb2.GetPluginCapabilitiesRequest(), self.info_timeout)
        return {plugin_capability_name(c.service.type) for c in resp.capabilities if c.HasField("service")}

    # --- controller -----------------------------------------------------------------------

    def controller_get_capabilities(self) -> set[str]:
        """Names of the advertised controller RPC capabilities, e.g. ``{"CREATE_DELETE_VOLUME"}``."""
        resp = self._controller_call(
            "ControllerGetCapabilities", csi_pb2.ControllerGetCapabilitiesRequest(), self.info_timeout
        )
        return {controller_capability_name(c.rpc.type) for c in resp.capabilities if c.HasField("rpc")}

    def create_volume(
        self,
        name: str,
        capabilities: Iterable[csi_pb2.VolumeCapability],
        required_bytes: int = 0,
        parameters: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        requisite: Iterable[Mapping[str, str]] = (),
        preferred: Iterable[Mapping[str, str]] = (),
        content_source: tuple[str, str] | None = None,
    ) -> CreatedVolume:
        """``content_source``: ``("snapshot", snapshot_id)`` (a restore) or ``("volume", volume_id)``
        (a clone), sent as ``volume_content_source``."""
        req = csi_pb2.CreateVolumeRequest(
            name=name,
            volume_capabilities=list(capabilities),
            parameters=dict(parameters or {}),
            secrets=dict(secrets or {}),
        )
        if content_source is not None:
            kind, source_id = content_source
            if kind == "snapshot":
                req.volume_content_source.snapshot.snapshot_id = source_id
            else:
                req.volume_content_source.volume.volume_id = source_id
        if required_bytes:
            req.capacity_range.required_bytes = int(required_bytes)
        requisite, preferred = list(requisite), list(preferred)
        if requisite or preferred:
            req.accessibility_requirements.requisite.extend(csi_pb2.Topology(segments=dict(t)) for t in requisite)
            req.accessibility_requirements.preferred.extend(csi_pb2.Topology(segments=dict(t)) for t in preferred)
        resp = self._controller_call("CreateVolume", req)
        vol = resp.volume
        return CreatedVolume(
            volume_id=vol.volume_id,
            capacity_bytes=int(vol.capacity_bytes),
            volume_context=dict(vol.volume_context),
            accessible_topology=tuple(dict(t.segments) for t in vol.accessible_topology),
        )

    def delete_volume(self, volume_id: str, secrets: Mapping[str, str] | None = None) -> None:
        self._controller_call(
            "DeleteVolume", csi_pb2.DeleteVolumeRequest(volume_id=volume_id, secrets=dict(secrets or {}))
        )

    def create_snapshot(
        self,
        name: str,
        source_volume_id: str,
        parameters: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> CreatedSnapshot:
        """CreateSnapshot as external-snapshotter sends it; sent again (same name) to follow a
        snapshot that is not ready to use yet."""
        req = csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=source_volume_id,
                                            parameters=dict(parameters or {}), secrets=dict(secrets or {}))
        snap = self._controller_call("CreateSnapshot", req).snapshot
        created = None
        if snap.HasField("creation_time"):
            created = snap.creation_time.seconds + snap.creation_time.nanos / 1e9
        return CreatedSnapshot(snap.snapshot_id, snap.source_volume_id, int(snap.size_bytes), created,
                               bool(snap.ready_to_use))

    def delete_snapshot(self, snapshot_id: str, secrets: Mapping[str, str] | None = None) -> None:
        self._controller_call(
            "DeleteSnapshot", csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id, secrets=dict(secrets or {}))
        )

    def controller_expand_volume(
        self,
        volume_id: str,
        required_bytes: int,
        capability: csi_pb2.VolumeCapability | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> ExpandedVolume:
        """ControllerExpandVolume as the external-resizer sends it: ``required_bytes`` only (no
        limit), the PV's capability, the controller-expand secrets."""
        req = csi_pb2.ControllerExpandVolumeRequest(volume_id=volume_id, secrets=dict(secrets or {}))
        req.capacity_range.required_bytes = int(required_bytes)
        if capability is not None:
            req.volume_capability.CopyFrom(capability)
        resp = self._controller_call("ControllerExpandVolume", req)
        return ExpandedVolume(int(resp.capacity_bytes), bool(resp.node_expansion_required))

    def controller_publish_volume(
        self,
        volume_id: str,
        node_id: str,
        capability: csi_pb2.VolumeCapability,
        readonly: bool = False,
        secrets: Mapping[str, str] | None = None,
        volume_context: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Attach the volume to the node; returns the ``publish_context`` for NodeStage/NodePublish."""
        resp = self._controller_call("ControllerPublishVolume", csi_pb2.ControllerPublishVolumeRequest(
            volume_id=volume_id, node_id=node_id, volume_capability=capability, readonly=readonly,
            secrets=dict(secrets or {}), volume_context=dict(volume_context or {})))
        return dict(resp.publish_context)

    def controller_unpublish_volume(self, volume_id: str, node_id: str,
                                    secrets: Mapping[str, str] | None = None) -> None:
        self._controller_call("ControllerUnpublishVolume", csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=volume_id, node_id=node_id, secrets=dict(secrets or {})))
