"""The narrow interface through which operations report into the actual state of the world.

Operations never see the cache itself: they can only record facts about the mounts they made
or removed, and the last error of a key. This keeps the actual state the single place where
results are written, and lets tests give operations a recording fake.
"""

from __future__ import annotations

from typing import ContextManager, Protocol

from operation_executor.errors import OperationError
from operation_executor.types import FsGroupResult, MarkDeviceOpts, MarkVolumeOpts


class ActualStateUpdater(Protocol):
    def mark_device_mounted(self, opts: MarkDeviceOpts) -> None: ...

    def mark_device_uncertain(self, opts: MarkDeviceOpts) -> None: ...

    def mark_device_unmounted(self, volume_id: str) -> None: ...

    def mark_volume_mounted(self, opts: MarkVolumeOpts) -> None: ...

    def mark_volume_uncertain(self, opts: MarkVolumeOpts) -> None: ...

    def mark_volume_unmounted(self, volume_id: str, pod_uid: str) -> None: ...

    def mark_volume_size(self, volume_id: str, size_bytes: int) -> None:
        """The size the volume's filesystem was grown to (online expansion)."""
        ...

    def mark_fs_group(self, volume_id: str, pod_uid: str, result: FsGroupResult) -> None:
        """What applying the pod's fsGroup did, after the pod's view was marked mounted."""
        ...

    def batch(self) -> ContextManager[None]:
        """The updates made inside are published as one change (one version bump, one
        wake-up of whoever waits for the actual state), for a batch of operations."""
        ...

    def record_result(self, volume_id: str, pod_uid: str | None, operation: str, error: OperationError | None) -> None:
        """Remember the outcome of the last operation on (volume, pod); None clears the error."""
        ...
