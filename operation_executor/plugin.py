"""The volume-plugin interface: what emptyDir, hostPath, local, NFS and CSI implement.

A plugin turns a ``VolumeSpec`` into host actions in two layers, like the kubelet's:

* the **device layer** (only when ``is_device_mountable``): wait for the device, then
  ``mount_device`` once per node at a global path (CSI NodeStageVolume, format-and-mount of a
  local block device), and ``unmount_device`` when the last pod is gone;
* the **pod layer**: ``set_up`` the pod's view of the volume (bind mount, tmpfs, NodePublish)
  and ``tear_down`` it.

Every method must be idempotent: after a crash it may be called again for a step that already
happened. Failures are reported by raising the typed errors of ``operation_executor.errors``.
Plugins get what they need from the host through ``PluginHost``; they never see the caches.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol

from operation_executor.executor import DEFAULT_LANE
from operation_executor.types import ConfigMapRef, PodRef, SecretRef, VolumeSpec, short_plugin_name


class ObjectLookup(Protocol):
    """The API objects a volume's content is built from. The daemon answers from the desired
    state's snapshot; the populator passes one bound to the snapshot it resolves."""

    def get_secret(self, ref: SecretRef) -> Mapping[str, bytes] | None:
        """The Secret's data, or None when it does not exist. Never log the result."""

    def get_configmap(self, ref: ConfigMapRef) -> Mapping[str, bytes] | None:
        """The ConfigMap's ``data`` (UTF-8) and ``binaryData`` keys, or None when it does not exist."""


class PluginHost(Protocol):
    """What the daemon offers plugins: the on-disk layout, mounting, and secret lookup."""

    root_dir: str
    node_name: str

    @property
    def mounter(self):  # -> mount_utils.mounter.Mounter
        ...

    def pod_volume_dir(self, pod_uid: str, plugin_name: str, volume_name: str) -> str:
        """``<root>/pods/<uid>/volumes/<plugin with / as ~>/<volume name>``."""

    def pod_volume_device_dir(self, pod_uid: str, plugin_name: str) -> str:
        """``<root>/pods/<uid>/volumeDevices/<plugin with / as ~>`` (the block device's parent)."""

    def plugin_dir(self, plugin_name: str) -> str:
        """``<root>/plugins/<plugin name>``: where a plugin keeps node-global mounts."""

    def get_secret(self, ref: SecretRef) -> Mapping[str, bytes] | None:
        """The Secret's data, or None when it does not exist. Never log the result."""

    def get_configmap(self, ref: ConfigMapRef) -> Mapping[str, bytes] | None:
        """The ConfigMap's keys and bytes, or None when it does not exist."""


@dataclass(frozen=True)
class StagedDevice:
    """A node-global mount (a stage) a plugin finds on disk at restart, before any pod is known:
    what reconstruction needs to record it and later unstage it with the plugin's reverse call."""

    volume_id: str
    device_mount_path: str
    spec: VolumeSpec


class VolumePlugin(ABC):
    """Base class of every volume plugin. ``name`` is kubelet-style, e.g. ``kubernetes.io/empty-dir``."""

    name: str = ""
    # Whether the intent journal must fsync before this plugin's steps. A step whose only
    # effect is a mount (tmpfs, bind) cannot outlive the boot that made it, and a crash of the
    # daemon alone never loses a record already written to the kernel; so for such plugins a
    # plain write is as safe as an fsync. Plugins whose steps leave state that survives a
    # reboot (a mkfs, a CSI driver's own bookkeeping) keep the default.
    durable_intents: bool = True

    def __init__(self, host: PluginHost) -> None:
        self.host = host

    # --- identity -------------------------------------------------------------------------

    @property
    def display_name(self) -> str:
        """The short name for tables and logs (``status``, ``drain``)."""
        return short_plugin_name(self.name)

    def can_support(self, source: object) -> bool:
        """True when this plugin serves the given pod/PV volume source object (the kubelet's
        ``CanSupport``): the populator picks the plugin of a volume with it."""
        return False

    def is_device_mountable(self, spec: VolumeSpec) -> bool:
        """True when the volume has a node-global stage (MountDevice) shared by its pods."""
        return False

    def volume_id(self, spec: VolumeSpec, pod: PodRef) -> str:
        """The unique volume name. Device-mountable volumes are shared by pods, so their id
        does not contain the pod; the others are per pod, which lets their operations for
        different pods run in parallel."""
        if self.is_device_mountable(spec):
            return f"{self.name}/{spec.name}"
        return f"{self.name}/{pod.uid}-{spec.name}"

    def attachable_volume_name(self, spec: VolumeSpec) -> str | None:
        """The kubelet's unique name of a volume the cluster's attach/detach controller
        attaches (``GetVolumeName`` of an attachable plugin: CSI's ``kubernetes.io/csi/<driver>^
        <handle>``), as the node lists it in ``status.volumesInUse``; None for volumes that are
        never attached (the default)."""
        return None

    def operation_lane(self, spec: VolumeSpec) -> str:
        """The executor lane (workers of its own) that runs this volume's operations, so that
        operations which wait never hold up another lane's: ``QUICK_LANE`` when every
        operation is a few local syscalls that never wait on a device, network or driver;
        one lane per CSI driver; ``DEFAULT_LANE`` for the rest."""
        return DEFAULT_LANE

    # --- device layer ---------------------------------------------------------------------

    def wait_for_device(self, spec: VolumeSpec) -> str | None:
        """Return the device path when the volume's device is present, without blocking.

        Raise ``WaitingError`` naming the device when it is not there yet: the reconciler
        re-examines the volume on the next device event. Plugins without a device return None.
        """
        return None

    def device_mount_path(self, spec: VolumeSpec) -> str | None:
        """The node-global mount path for device-mountable volumes; None otherwise."""
        return None

    def mount_device(self, spec: VolumeSpec, device_path: str | None, device_mount_path: str) -> None:
        """Stage the volume at ``device_mount_path`` (idempotent)."""
        raise NotImplementedError(f"{self.name} is not device-mountable")

    def unmount_device(self, spec: VolumeSpec, device_mount_path: str) -> None:
        """Undo ``mount_device`` (idempotent: success when it is not staged)."""
        raise NotImplementedError(f"{self.name} is not device-mountable")

    # --- pod layer ------------------------------------------------------------------------

    @abstractmethod
    def mount_path(self, spec: VolumeSpec, pod: PodRef, outer_name: str) -> str:
        """The path where the pod sees the volume (a directory, or a device node for Block)."""

    @abstractmethod
    def set_up(self, spec: VolumeSpec, pod: PodRef, outer_name: str, device_mount_path: str | None) -> None:
        """Make the volume visible at ``mount_path`` (idempotent)."""

    @abstractmethod
    def tear_down(self, spec: VolumeSpec, pod: PodRef, outer_name: str, mount_path: str) -> None:
        """Remove the pod's view and its now-empty directory; never delete data (idempotent)."""

    # --- on-disk knowledge: reconstruction at restart, watching, status ------------------

    def pod_mount_path_on_disk(self, volume_dir: str, block: bool) -> str:
        """The path the pod sees, for a volume dir found under ``pods/<uid>/volumes/<plugin>/``
        (``block`` False) or ``volumeDevices/<plugin>/`` (``block`` True). Most plugins mount
        on the volume dir itself; CSI publishes into ``<dir>/mount``."""
        return volume_dir

    def owns_pod_dir(self, escaped: str) -> bool:
        """Whether ``pods/<uid>/volumes/<escaped>`` holds this plugin's volumes although
        ``escaped`` is not its name with ``/`` as ``~``: FlexVolume names the dir after the
        driver (``vendor~driver``), as the kubelet does. Asked only when no plugin has that name."""
        return False

    def construct_volume_spec(self, volume_name: str, volume_dir: str) -> VolumeSpec | None:
        """Rebuild the spec of a pod volume found on disk at restart that nobody desires, from
        its name and whatever the plugin saved in ``volume_dir`` (the kubelet's
        ``ConstructVolumeSpec``). It is only ever torn down, so a spec without a source is
        enough for most plugins. None means nothing usable was saved: the volume is then
        cleaned up only when its path is still a mount point."""
        return VolumeSpec(name=volume_name, plugin_name=self.name, source=None)

    def find_staged_devices(self) -> Iterable[StagedDevice]:
        """The node-global mounts this plugin may have left behind (any pod's), rebuilt from
        the layout of ``plugin_dir`` at restart; reconstruction checks which are still staged.
        Plugins without a device layer have none."""
        return ()

    def device_mount_is_mount_point(self, spec: VolumeSpec) -> bool:
        """Whether a stage at ``device_mount_path`` is always a mount point. False for CSI: a
        driver may stage without mounting, so only the directory tells it is there."""
        return True

    def pod_dir_is_mount_point(self, spec: VolumeSpec) -> bool:
        """Whether the pod's view must be a mount point to count as present. False for a
        volume that is a plain directory on disk (an emptyDir on the node's disk): its
        existence is the mount, and it cannot vanish from the mount table."""
        return True

    def is_present_on_disk(self, spec: VolumeSpec, mount_path: str, is_mount_point: bool) -> bool:
        """Whether the pod's view at ``mount_path`` exists, given whether it is a mount point."""
        if self.pod_dir_is_mount_point(spec):
            return is_mount_point
        return is_mount_point or os.path.isdir(mount_path)

    # Whether the populator puts the pod's metadata (``VolumeSpec.pod_info``) in the spec:
    # only for plugins whose content shows it (downwardAPI, projected).
    uses_pod_info: bool = False

    def content_generation(self, spec: VolumeSpec, pod: PodRef, objects: ObjectLookup) -> str | None:
        """A token that changes whenever the content the pod's view must show changes (the
        referenced ConfigMap or Secret, the pod's labels). The populator stores it in
        ``VolumeSpec.content_generation``; the reconciler sets up again a mounted view whose
        token differs (the kubelet's ``RequiresRemount``). Never raises: a missing object is
        a token of its own, and ``set_up`` reports it. None: the content is not ours."""
        return None

    def operation_label(self, operation: str) -> str:
        """How ``status`` names an operation of this plugin (``MountDevice``, ``SetUp``, ...)
        for people who read the plugin's own logs (CSI: ``NodeStageVolume``)."""
        return operation

    # Whether a statvfs of the pod's path gives the volume's usage when ``volume_stats`` has
    # no answer: true for filesystems on this node, never for network ones (a hung server).
    statvfs_stats: bool = False

    # --- fsGroup ----------------------------------------------------------------------------

    def fs_group_mode(self, spec: VolumeSpec) -> str | None:
        """How a pod's ``securityContext.fsGroup`` reaches this volume (the kubelet's
        per-plugin rules): ``FS_GROUP_WALK`` -- the mount operation gives the tree at
        ``mount_path`` the group and setgid bits after a successful ``set_up``
        (``mount_utils.ownership``; never for a read-only volume); ``FS_GROUP_MOUNT_GROUP`` --
        the plugin hands ``spec.fs_group`` to its driver itself (CSI VOLUME_MOUNT_GROUP) and
        there is no walk; None -- fsGroup does not apply (hostPath, the default). Plugins that
        write their files themselves (configMap, secret, downwardAPI, projected) answer
        ``FS_GROUP_WALK``: the walk only changes what is wrong, so after each write it costs
        one stat per file."""
        return None

    def fs_group_skip_reason(self, spec: VolumeSpec) -> str:
        """Why ``fs_group_mode`` is None for this volume, for status (``skipped_reason``)."""
        return f"{self.display_name} volumes do not take an fsGroup"

    # Threads for the fsGroup walk; None: the walk's own default (the C walk one per core, at
    # most 4; the Python fallback one, as the GIL makes more slower, see mount_utils.ownership).
    # A network filesystem, where every syscall waits for the server, sets more.
    fs_group_walk_workers: int | None = None

    # Whether the fsGroup walk gives this plugin's files the read-only bits (``|0440``) rather
    # than ``|0660``: the kubelet's ``GetAttributes().ReadOnly`` of the plugins that write their
    # files themselves (configMap, secret, downwardAPI, projected), whose views pods only read.
    fs_group_read_only_bits: bool = False

    # --- optional capabilities ------------------------------------------------------------

    def expand(self, spec: VolumeSpec, device_path: str | None, device_mount_path: str | None) -> int | None:
        """Grow the filesystem to the device's size; returns the new size in bytes, or None
        when the plugin does not support online expansion."""
        return None

    def volume_stats(self, spec: VolumeSpec, mount_path: str) -> Mapping[str, int] | None:
        """Capacity/used bytes and inodes for metrics, or None when unknown."""
        return None


FS_GROUP_WALK = "walk"
FS_GROUP_MOUNT_GROUP = "mount_group"


class PluginRegistry:
    """Plugins by name. ``find`` raises ``KeyError`` naming the plugin when it is unknown."""

    def __init__(self) -> None:
        self._plugins: dict[str, VolumePlugin] = {}

    def register(self, plugin: VolumePlugin) -> None:
        if not plugin.name:
            raise ValueError(f"plugin {type(plugin).__name__} has no name")
        self._plugins[plugin.name] = plugin

    def find(self, name: str) -> VolumePlugin:
        try:
            return self._plugins[name]
        except KeyError:
            raise KeyError(f"no volume plugin named {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._plugins)

    def plugins(self) -> list[VolumePlugin]:
        return [self._plugins[n] for n in sorted(self._plugins)]

    def operation_label(self, plugin_name: str | None, operation: str) -> str:
        """The plugin's name for an operation; the operation itself for an unknown plugin."""
        plugin = self._plugins.get(plugin_name or "")
        return plugin.operation_label(operation) if plugin is not None else operation

    def find_for_pod_dir(self, escaped: str) -> VolumePlugin | None:
        """The plugin whose volumes are under ``pods/<uid>/volumes/<escaped>``: the plugin of
        that name (``~`` read as ``/``), else the one plugin that owns the dir
        (``VolumePlugin.owns_pod_dir``); None when none does."""
        plugin = self._plugins.get(escaped.replace("~", "/"))
        if plugin is not None:
            return plugin
        owners = [p for p in self._plugins.values() if p.owns_pod_dir(escaped)]
        return owners[0] if len(owners) == 1 else None

    def find_for_source(self, source: object) -> VolumePlugin | None:
        """The plugin that serves a volume source (the kubelet's ``FindPluginBySpec`` over
        ``CanSupport``); None when none does. Two plugins claiming one source is a bug."""
        found = [p for p in self._plugins.values() if p.can_support(source)]
        if len(found) > 1:
            raise ValueError(f"plugins {', '.join(sorted(p.name for p in found))} all support "
                             f"{type(source).__name__}")
        return found[0] if found else None
