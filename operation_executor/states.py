"""Three-valued mount states. ``UNCERTAIN`` means "possibly mounted": it counts as mounted for
cleanup (so nothing leaks) and as not mounted for readiness (so the mount is retried)."""

from __future__ import annotations

from enum import Enum


class DeviceMountState(str, Enum):
    """State of a volume's node-global (staging) mount."""

    NOT_MOUNTED = "not_mounted"
    UNCERTAIN = "uncertain"
    MOUNTED = "mounted"

    @property
    def may_be_mounted(self) -> bool:
        return self is not DeviceMountState.NOT_MOUNTED


class VolumeMountState(str, Enum):
    """State of one pod's view of a volume (SetUp / NodePublish)."""

    NOT_MOUNTED = "not_mounted"
    UNCERTAIN = "uncertain"
    MOUNTED = "mounted"

    @property
    def may_be_mounted(self) -> bool:
        return self is not VolumeMountState.NOT_MOUNTED
