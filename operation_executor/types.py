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


@dataclass(frozen=True, slots=True)
class ConfigMapRef:
    """A reference to a ConfigMap, looked up at the moment of a call (like ``SecretRef``)."""

    namespace: str
    name: str


@dataclass(frozen=True)
class PodInfo:
    """What a volume's content may say about its pod (downwardAPI ``fieldRef`` and
    ``resourceFieldRef``): a small value, not the whole Pod, so a plugin depends on no
    manifest model. ``containers`` holds (name, requests, limits) with exact quantities."""

    uid: str
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    service_account_name: str = "default"
    containers: tuple[tuple[str, Mapping[str, Any], Mapping[str, Any]], ...] = ()


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
    # The pod's fsGroup, only on the copy of the spec the mount operation hands to the
    # plugin's mount_device/set_up (a driver with VOLUME_MOUNT_GROUP applies it itself). The
    # desired and actual states keep specs without it: a volume's spec is the same for
    # every pod that uses it, the fsGroup is per pod (VolumeToMount.fs_group).
    fs_group: int | None = None
    # Set for plugins whose content follows the pod (``VolumePlugin.uses_pod_info``).
    pod_info: PodInfo | None = None
    # A token of the content a view must show (configMap data, a pod's labels), from
    # ``VolumePlugin.content_generation``; None for volumes whose content is not ours to
    # write. A mounted view set up with another token is set up again (kubelet RequiresRemount).
    content_generation: str | None = None


@dataclass(frozen=True)
class VolumeToMount:
    """One (volume, pod) pair of the desired state, as the reconciler sees it."""

    volume_id: str
    pod: PodRef
    outer_name: str  # the pod's name for the volume (spec.volumes[].name)
    spec: VolumeSpec
    plugin_name: str
    device_mountable: bool
    # The pod's securityContext.fsGroup and fsGroupChangePolicy (None: not given, i.e. no
    # fsGroup / Always): applied after SetUp by the mount operation (see FsGroupResult).
    fs_group: int | None = None
    fs_group_change_policy: str | None = None

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


@dataclass(frozen=True)
class FsGroupResult:
    """What applying a pod's fsGroup to one (volume, pod) did, for status and explain:
    the group and policy asked for, the walk's wall time and counts, or why there was no walk
    (``skipped_reason``: read-only, not supported by the plugin, delegated to the CSI driver,
    OnRootMismatch with a root that already matches)."""

    gid: int
    policy: str
    seconds: float = 0.0
    files_changed: int = 0
    files: int = 0
    dirs: int = 0
    skipped_reason: str | None = None
    mode: str | None = None  # the plugin's fs_group_mode: "walk", "mount_group" or None

    def to_dict(self) -> dict:
        return {"gid": self.gid, "policy": self.policy, "mode": self.mode, "seconds": round(self.seconds, 3),
                "files_changed": self.files_changed, "files": self.files, "dirs": self.dirs,
                "skipped_reason": self.skipped_reason}
