"""``node.status.volumesInUse``: what the attach/detach controller reads before it detaches.

Why it matters: the ADC does not detach a volume that a node lists as in use (only after
6 minutes of an unhealthy node, or with the out-of-service taint), so a volume must be listed
from the moment a pod needing it is desired until its device is unstaged (kubelet
``GetVolumesInUse``: attachable volumes of the desired state and of the actual state, sorted).
We write that one field with a merge patch of the status subresource: other status fields
(conditions, addresses, volumesAttached, written by the kubelet and the ADC) are never sent, so
never replaced.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from operation_executor.types import VolumeSpec

#: The CSI plugin's name, the first part of a CSI volume's unique name.
CSI_PLUGIN_NAME = "kubernetes.io/csi"


def in_use_name(spec: VolumeSpec) -> str | None:
    """The kubelet's unique name of an attachable volume (``kubernetes.io/csi/<driver>^<handle>``,
    ``csi_plugin.go GetVolumeName``), or None for a volume the ADC never attaches (inline
    ephemeral CSI, emptyDir, hostPath, local, NFS, configMap ...)."""
    src = spec.source
    if spec.plugin_name == CSI_PLUGIN_NAME and getattr(src, "volume_handle", None) and getattr(src, "driver", None):
        return f"{CSI_PLUGIN_NAME}/{src.driver}^{src.volume_handle}"
    return None


def volumes_in_use(specs: Iterable[VolumeSpec | None]) -> list[str]:
    """Sorted, unique unique-names of the attachable volumes among ``specs``."""
    return sorted({n for n in (in_use_name(s) for s in specs if s is not None) if n})


class VolumesInUseWriter:
    """Sends the current set when it differs from what the Node was last told.

    ``reported`` is what the API server accepted last (None before the first success); a
    failed patch leaves it, so the next attempt (after the reporter's backoff) sends again.
    """

    def __init__(self, node_name: str, current: Callable[[], Iterable[str]],
                 ready: Callable[[], bool] = lambda: True) -> None:
        self.node_name = node_name
        self._current = current
        self._ready = ready
        self.reported: list[str] | None = None
        self.patches = 0

    def wanted(self) -> list[str]:
        return sorted(set(self._current()))

    def needs_write(self) -> bool:
        return self._ready() and self.wanted() != self.reported

    def write(self, client: Any) -> None:
        from lightkube.resources.core_v1 import Node
        from lightkube.types import PatchType

        if not self._ready():
            return
        names = self.wanted()
        if names == self.reported:
            return
        # null removes the field (the kubelet leaves an empty list out too).
        client.patch(Node.Status, self.node_name, {"status": {"volumesInUse": names or None}},
                     patch_type=PatchType.MERGE)
        self.reported = names
        self.patches += 1
