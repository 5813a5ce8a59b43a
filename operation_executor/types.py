"""Value types that flow between the caches, the reconciler and the operations.

They are frozen: caches hand out these copies, so a caller can keep one across a pass without
holding any lock and without seeing it change under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from operation_executor.states import DeviceMountState, VolumeMountState

FILESYSTEM = "Filesystem"
BLOCK = "Block"



def short_plugin_name(plugin_name: str) -> str:
    """The name shown in tables: the part after the vendor prefix (``<domain>/csi`` -> ``csi``).
    A free function (``VolumePlugin.display_name`` uses it) because the CLI formats
    ``status --json`` output without loading any plugin."""
    return plugin_name.rpartition("/")[2]

@dataclass(frozen=True, slots=True)
class PodRef:
    """The identity of a pod: the UID names its directory, namespace/name is for people."""

    uid: str
    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A reference to a Secret; the value is fetched only at the moment of a call, never stored."""

    namespace: str
    name: str


@dataclass(frozen=True)
class VolumeSpec:
    """A volume resolved far enough that a plugin can act on it.

    ``name`` is the spec name: the PersistentVolume's name for a claim, the pod's volume name
    for an inline volume. ``source`` is the plugin's own typed source (a frozen dataclass from
    the manifest models); the executor never looks inside it.
    """

    name: str
    plugin_name: str
    source: Any
    read_only: bool = False
    volume_mode: str = FILESYSTEM
    mount_options: tuple[str, ...] = ()
    pv_name: str | None = None
    claim: str | None = None  # "namespace/name" of the claim this came through, if any
    access_modes: tuple[str, ...] = ()
    capacity_bytes: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VolumeToMount:
    """One (volume, pod) pair of the desired state, as the reconciler sees it."""

    volume_id: str
    pod: PodRef
    outer_name: str  # the pod's name for the volume (spec.volumes[].name)
    spec: VolumeSpec
    plugin_name: str
    device_mountable: bool

    @property
    def operation_pod_uid(self) -> str | None:
        """The pod part of this volume's mount operation key: a device-mountable volume is
        shared by its pods, so its operations are keyed by the volume alone (None)."""
        return None if self.device_mountable else self.pod.uid


@dataclass(frozen=True)
class MountedVolume:
    """One pod's view of a volume in the actual state (mounted or possibly mounted)."""

    volume_id: str
    pod: PodRef
    outer_name: str
    spec: VolumeSpec
    plugin_name: str
    mount_path: str
    state: VolumeMountState
    device_mount_path: str | None = None


@dataclass(frozen=True)
class AttachedVolume:
    """A volume known to the actual state, with its node-global (device) mount state."""

    volume_id: str
    spec: VolumeSpec
    plugin_name: str
    device_mountable: bool
    device_state: DeviceMountState
    device_path: str | None
    device_mount_path: str | None
    pod_uids: frozenset[str]


@dataclass(frozen=True)
class MarkVolumeOpts:
    """What an operation records about one pod's view of a volume (the kubelet's
    ``MarkVolumeOpts``): one value instead of seven positional arguments."""

    volume_id: str
    pod: PodRef
    outer_name: str
    spec: VolumeSpec
    plugin_name: str
    mount_path: str
    device_mountable: bool


@dataclass(frozen=True)
class MarkDeviceOpts:
    """What an operation records about a volume's node-global stage."""

    volume_id: str
    spec: VolumeSpec
    plugin_name: str
    device_path: str | None
    device_mount_path: str
