"""Attach by the cluster (issue 15, item 4): the VolumeAttachment gate of a CSI PV from the API.

On a node of a cluster the attach/detach controller and the driver's external-attacher attach
a volume; the kubelet only waits for the VolumeAttachment it names itself
(``csi-`` + hex sha256 of volume handle, driver name and node name) to say
``status.attached: true``, and hands its ``status.attachmentMetadata`` to NodeStage and
NodePublish as ``publish_context``. Here the same: for a PV the API server holds, the CSI
plugin's one lookup "publish_context of volume X" is answered from this node's
VolumeAttachments (watched by the API-server source) instead of by the one-host attach
controller, which never sends ControllerPublishVolume for such a volume.

A PV counts as the cluster's when the API-server source has a PV of that name with the same
driver and volume handle; a PV from the manifest dir keeps the one-host behaviour.

The rule for "attach required" is the kubelet's: the CSIDriver object's ``attachRequired``,
true when the API has no CSIDriver object for the driver.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Mapping, Optional

from operation_executor.errors import WaitingError

#: WaitingError code of a volume that waits for its VolumeAttachment.
WAITING_CODE = "VOLUME_ATTACHMENT_PENDING"
#: WaitingError code of a volume whose VolumeAttachment reports an attachError.
ATTACH_ERROR_CODE = "VOLUME_ATTACHMENT_ERROR"


def attachment_name(volume_handle: str, driver: str, node_name: str) -> str:
    """The VolumeAttachment name the kubelet and the attach/detach controller use
    (``getAttachmentName``: ``csi-%x`` of sha256(handle + driver + node))."""
    digest = hashlib.sha256(f"{volume_handle}{driver}{node_name}".encode()).hexdigest()
    return f"csi-{digest}"


class ClusterAttachments:
    """Answers "publish_context of volume X" for the PVs of the API server.

    Narrow inputs: ``snapshot`` (the API-server source's snapshot: PVs and CSIDrivers),
    ``attachments`` (this node's VolumeAttachments by name, raw API objects), the node name.
    """

    def __init__(self, snapshot: Callable[[], Any], attachments: Callable[[], Mapping[str, Mapping[str, Any]]],
                 node_name: str) -> None:
        self._snapshot = snapshot
        self._attachments = attachments
        self.node_name = node_name

    def handles(self, driver: str, volume_handle: str, pv_name: Optional[str]) -> bool:
        """Whether the cluster attaches this volume: the API server holds its PV."""
        if not pv_name:
            return False
        pv = self._snapshot().pvs.get(pv_name)
        src = getattr(pv, "source", None)
        return (pv is not None and getattr(src, "driver", None) == driver
                and getattr(src, "volume_handle", None) == volume_handle)

    def attach_required(self, driver: str) -> bool:
        """The CSIDriver's ``attachRequired``; true when the API has no CSIDriver object."""
        obj = self._snapshot().csidrivers.get(driver)
        return True if obj is None else bool(getattr(obj, "attach_required", True))

    def publish_context(self, driver: str, volume_handle: str, pv_name: Optional[str]) -> dict[str, str]:
        """``{}`` when the driver needs no attach; the VolumeAttachment's attachmentMetadata once
        it is attached; ``WaitingError`` naming the VolumeAttachment until then (with its
        ``attachError`` message when it reports one)."""
        if not self.attach_required(driver):
            return {}
        name = attachment_name(volume_handle, driver, self.node_name)
        waiting_for = f"VolumeAttachment {name} to be attached"
        va = self._attachments().get(name)
        if va is None:
            raise WaitingError(f"waiting for VolumeAttachment {name} to be attached (volume {pv_name}, driver "
                               f"{driver}): it does not exist yet", waiting_for, code=WAITING_CODE)
        status = va.get("status") or {}
        if status.get("attached") is True:
            meta = status.get("attachmentMetadata") or {}
            return {str(k): str(v) for k, v in meta.items()}
        error = status.get("attachError") or {}
        if error:
            message = str(error.get("message") or "no message")
            raise WaitingError(f"waiting for VolumeAttachment {name} to be attached (volume {pv_name}): "
                               f"attachError: {message}", f"{waiting_for} (its attachError: {message})",
                               code=ATTACH_ERROR_CODE)
        raise WaitingError(f"waiting for VolumeAttachment {name} to be attached (volume {pv_name}, driver "
                           f"{driver})", waiting_for, code=WAITING_CODE)
