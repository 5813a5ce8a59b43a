"""A synchronous client for a CSI driver's Identity and Node services over its unix socket.

Every call carries a deadline and every failure comes back as one of the typed errors of
``operation_executor.errors`` so the reconciler can decide from the *type* whether the volume
may be half-mounted:

* ``UncertainError`` for the codes kubelet's ``csi_client.go isFinalError`` calls non-final
  (DEADLINE_EXCEEDED, UNAVAILABLE, CANCELLED, ABORTED, RESOURCE_EXHAUSTED) and for anything
  that is not a gRPC status at all: the driver may still be working on the request.
* ``FinalError`` for every other status (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
  ALREADY_EXISTS, INTERNAL, UNIMPLEMENTED, ...): the driver answered and nothing is running.

Requests carry secrets (``csi_secret`` fields), so a request is never logged, put in an error
message or repr'd; ``sanitize_request`` renders one safely for debug logs.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable, Mapping

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from operation_executor.errors import FinalError, OperationError, UncertainError
from volumemanager._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from volumemanager.csi.channel import (  # noqa: F401 - the defaults are re-exported
    DEFAULT_AUTHORITY,
    DEFAULT_INFO_TIMEOUT_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    CSIChannel,
)
from volumemanager.csi.endpoint import socket_path_of  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

# kubelet's isFinalError: these mean "the operation may still be in progress".
UNCERTAIN_CODES = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

STRIPPED = "***stripped***"

# VolumeCapability.AccessMode names by Kubernetes access mode (kubelet asCSIAccessModeV1).
_K8S_TO_CSI_ACCESS = {
    "ReadWriteOnce": "SINGLE_NODE_WRITER",
    "ReadOnlyMany": "MULTI_NODE_READER_ONLY",
    "ReadWriteMany": "MULTI_NODE_MULTI_WRITER",
    "ReadWriteOncePod": "SINGLE_NODE_WRITER",
}
# With the driver's SINGLE_NODE_MULTI_WRITER node capability kubelet switches RWO/RWOP to the
# more precise modes.
_K8S_TO_CSI_ACCESS_SNMW = {
    "ReadWriteOnce": "SINGLE_NODE_MULTI_WRITER",
    "ReadOnlyMany": "MULTI_NODE_READER_ONLY",
    "ReadWriteMany": "MULTI_NODE_MULTI_WRITER",
    "ReadWriteOncePod": "SINGLE_NODE_SINGLE_WRITER",
}


# Node capability values that the vendored spec (1.12+) no longer names but drivers built on an
# older spec still advertise: 4 was the alpha VOLUME_CONDITION, removed upstream and kept there
# as ``reserved 4``. Without this a driver's status read "UNKNOWN_4".
RETIRED_NODE_CAPABILITIES = {4: "VOLUME_CONDITION"}


def node_capability_name(value: int) -> str:
    """The name of a ``NodeServiceCapability.RPC.Type`` value, read from the generated enum;
    a retired value gets its old name, and only a value no spec we know names is
    ``"UNKNOWN_<n>"``."""
    enum = csi_pb2.NodeServiceCapability.RPC.Type
    if value in enum.values():
        return enum.Name(value)
    return RETIRED_NODE_CAPABILITIES.get(value, f"UNKNOWN_{value}")


def access_mode(k8s_modes: Iterable[str], single_node_multi_writer: bool = False) -> int:
    """The CSI access mode kubelet sends for a volume: from the *first* Kubernetes access mode
    (ReadWriteOnce when there is none), as ``asCSIAccessModeV1`` maps it."""
    modes = list(k8s_modes)
    first = modes[0] if modes else "ReadWriteOnce"
    table = _K8S_TO_CSI_ACCESS_SNMW if single_node_multi_writer else _K8S_TO_CSI_ACCESS
    name = table.get(first)
    if name is None:
        raise FinalError(f"unknown access mode {first!r}", code="INVALID_ACCESS_MODE")
    return csi_pb2.VolumeCapability.AccessMode.Mode.Value(name)


def volume_capability(
    block: bool,
    access: int,
    fs_type: str = "",
    mount_flags: Iterable[str] = (),
    volume_mount_group: str = "",
) -> csi_pb2.VolumeCapability:
    cap = csi_pb2.VolumeCapability(access_mode=csi_pb2.VolumeCapability.AccessMode(mode=access))
    if block:
        cap.block.SetInParent()
    else:
        cap.mount.fs_type = fs_type or ""
        cap.mount.mount_flags.extend(mount_flags)
        if volume_mount_group:
            cap.mount.volume_mount_group = volume_mount_group
    return cap


def _is_secret(field: FieldDescriptor) -> bool:
    return bool(field.GetOptions().Extensions[csi_pb2.csi_secret])


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf 6.32+ deprecates ``label``; older 6.x runtimes have only ``label``.
    flag = getattr(field, "is_repeated", None)
    if flag is None:
        return field.label == FieldDescriptor.LABEL_REPEATED
    return bool(flag() if callable(flag) else flag)


def _sanitize(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if _is_secret(field):
            out[field.name] = STRIPPED
        elif field.name == "mount_flags":
            # The spec: "mount_flags MAY contain sensitive information" (CIFS passwords...).
            out[field.name] = f"<{len(value)} flags>"
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                out[field.name] = {
                    k: (_sanitize(v) if isinstance(v, Message) else v) for k, v in value.items()
                }
            elif _is_repeated(field):
                out[field.name] = [_sanitize(v) for v in value]
            else:
                out[field.name] = _sanitize(value)
        elif _is_repeated(field):
            out[field.name] = list(value)
        else:
            out[field.name] = value
    return out


def sanitize_request(msg: Message) -> str:
    """A one-line JSON rendering of ``msg`` with every ``csi_secret`` field replaced by
    ``***stripped***`` and mount flags reduced to a count, like kubernetes-csi protosanitizer.
    Safe for debug logs; never log a request any other way."""
    return json.dumps(_sanitize(msg), sort_keys=True, default=str)


def _status_name(code: grpc.StatusCode | None) -> str:
    return code.name if code is not None else "UNKNOWN"


def translate_error(
    method: str, endpoint: str, err: BaseException, uncertain_codes: frozenset = UNCERTAIN_CODES
) -> OperationError:
    """Map a failure of ``method`` to FinalError/UncertainError with the gRPC status name as code.

    The message is the driver's own status message (which the spec says may be shown to
    users) prefixed with the method; it never contains the request. ``uncertain_codes``: the
    node calls use kubelet's set; the controller calls the sidecars' (see controller_client)."""
    if isinstance(err, grpc.RpcError) and hasattr(err, "code"):
        code = err.code()
        details = err.details() if hasattr(err, "details") else None
        message = f"{method}: {details or _status_name(code)}"
        if code in uncertain_codes:
            return UncertainError(message, code=_status_name(code))
        return FinalError(message, code=_status_name(code))
    # Not a gRPC status (a broken channel, a bug in a stub): the request may have reached the
    # driver, so be on the safe side like kubelet.
    return UncertainError(f"{method} on {endpoint}: {type(err).__name__}: {err}", code="UNKNOWN")


class CSINodeClient(CSIChannel[csi_pb2_grpc.NodeStub]):
    """One gRPC channel to one driver endpoint, reused for every call until ``close()``.

    ``timeout`` is the deadline of the volume operations (stage, publish, expand, ...);
    ``info_timeout`` that of identity and capability calls. Both default to kubelet's values and
    are overridable so tests can use one or two seconds.
    """

    service_stub = csi_pb2_grpc.NodeStub

    def __init__(
        self,
        endpoint: str,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        info_timeout: float = DEFAULT_INFO_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(endpoint, timeout, info_timeout)

    # --- plumbing (the channel and its stubs: CSIChannel) ----------------------------------

    def _call(self, method: str, fn: Callable[..., Any], request: Message, timeout: float) -> Any:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("CSI %s on %s: %s", method, self.endpoint, sanitize_request(request))
        try:
            return fn(request, timeout=timeout)
        except Exception as err:  # noqa: BLE001 - every failure is classified, none escapes raw
            raise translate_error(method, self.endpoint, err) from None

    def _node_call(self, method: str, request: Message, timeout: float | None = None) -> Any:
        node, _ = self._stubs()
        return self._call(method, getattr(node, method), request, timeout or self.timeout)

    def _identity_call(self, method: str, request: Message) -> Any:
        _, identity = self._stubs()
        return self._call(method, getattr(identity, method), request, self.info_timeout)

    # --- identity -------------------------------------------------------------------------

    def get_plugin_info(self) -> csi_pb2.GetPluginInfoResponse:
        return self._identity_call("GetPluginInfo", csi_pb2.GetPluginInfoRequest())

    def probe(self) -> bool:
        """True when the driver is ready (a missing ``ready`` field means ready, per the spec)."""
        resp = self._identity_call("Probe", csi_pb2.ProbeRequest())
        return resp.ready.value if resp.HasField("ready") else True

    # --- node -----------------------------------------------------------------------------

    def node_get_info(self) -> csi_pb2.NodeGetInfoResponse:
        return self._node_call("NodeGetInfo", csi_pb2.NodeGetInfoRequest(), self.info_timeout)

    def node_get_capabilities(self) -> set[str]:
        """Names of the advertised node RPC capabilities, e.g. ``{"STAGE_UNSTAGE_VOLUME"}``.
        Values this client does not know (a newer spec) are kept as ``"UNKNOWN_<n>"``."""
        resp = self._node_call("NodeGetCapabilities", csi_pb2.NodeGetCapabilitiesRequest(), self.info_timeout)
        return {node_capability_name(cap.rpc.type) for cap in resp.capabilities if cap.HasField("rpc")}

    def node_stage_volume(
        self,
        volume_id: str,
        staging_target_path: str,
        volume_capability: csi_pb2.VolumeCapability,
        publish_context: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        volume_context: Mapping[str, str] | None = None,
    ) -> None:
        self._node_call(
            "NodeStageVolume",
            csi_pb2.NodeStageVolumeRequest(
                volume_id=volume_id,
                staging_target_path=staging_target_path,
                volume_capability=volume_capability,
                publish_context=dict(publish_context or {}),
                secrets=dict(secrets or {}),
                volume_context=dict(volume_context or {}),
            ),
        )

    def node_unstage_volume(self, volume_id: str, staging_target_path: str) -> None:
        self._node_call(
            "NodeUnstageVolume",
            csi_pb2.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging_target_path),
        )

    def node_publish_volume(
        self,
        volume_id: str,
        target_path: str,
        volume_capability: csi_pb2.VolumeCapability,
        readonly: bool = False,
        staging_target_path: str = "",
        publish_context: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        volume_context: Mapping[str, str] | None = None,
    ) -> None:
        self._node_call(
            "NodePublishVolume",
            csi_pb2.NodePublishVolumeRequest(
                volume_id=volume_id,
                target_path=target_path,
                staging_target_path=staging_target_path or "",
                volume_capability=volume_capability,
                readonly=readonly,
                publish_context=dict(publish_context or {}),
                secrets=dict(secrets or {}),
                volume_context=dict(volume_context or {}),
            ),
        )

    def node_unpublish_volume(self, volume_id: str, target_path: str) -> None:
        self._node_call(
            "NodeUnpublishVolume",
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target_path),
        )

    def node_expand_volume(
        self,
        volume_id: str,
        volume_path: str,
        required_bytes: int = 0,
        limit_bytes: int = 0,
        staging_target_path: str = "",
        volume_capability: csi_pb2.VolumeCapability | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> int:
        """Returns the capacity the driver reports (0 when it does not say)."""
        req = csi_pb2.NodeExpandVolumeRequest(
            volume_id=volume_id,
            volume_path=volume_path,
            staging_target_path=staging_target_path or "",
            secrets=dict(secrets or {}),
        )
        if required_bytes or limit_bytes:
            req.capacity_range.required_bytes = required_bytes
            req.capacity_range.limit_bytes = limit_bytes
        if volume_capability is not None:
            req.volume_capability.CopyFrom(volume_capability)
        resp = self._node_call("NodeExpandVolume", req)
        return int(resp.capacity_bytes)

    def node_get_volume_stats(
        self, volume_id: str, volume_path: str, staging_target_path: str = ""
    ) -> dict[str, int]:
        """Usage as a flat dict: ``capacity_bytes``, ``available_bytes``, ``used_bytes``,
        ``inodes``, ``inodes_free``, ``inodes_used`` (only the units the driver reported)."""
        resp = self._node_call(
            "NodeGetVolumeStats",
            csi_pb2.NodeGetVolumeStatsRequest(
                volume_id=volume_id, volume_path=volume_path, staging_target_path=staging_target_path or ""
            ),
        )
        out: dict[str, int] = {}
        for usage in resp.usage:
            if usage.unit == csi_pb2.VolumeUsage.BYTES:
                out.update(capacity_bytes=usage.total, available_bytes=usage.available, used_bytes=usage.used)
            elif usage.unit == csi_pb2.VolumeUsage.INODES:
                out.update(inodes=usage.total, inodes_free=usage.available, inodes_used=usage.used)
        return out
