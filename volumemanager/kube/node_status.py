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

#: A volume's unique name as the cluster's attach/detach controller knows it, or None for a
#: volume it never attaches: each plugin's ``attachable_volume_name``.
AttachableName = Callable[[VolumeSpec], "str | None"]


def volumes_in_use(specs: Iterable[VolumeSpec | None], name_of: AttachableName) -> list[str]:
    """Sorted, unique names of the attachable volumes among ``specs``."""
    return sorted({n for n in (name_of(s) for s in specs if s is not None) if n})


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
