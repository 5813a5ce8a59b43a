"""The CSI volume plugin: kubelet's ``kubernetes.io/csi`` on top of ``DriverRegistry``.

Persistent CSI volumes (a PV's ``spec.csi``, ``volume_handle`` set) are device-mountable like in
kubelet: ``mount_device`` stages once per node at
``<root>/plugins/kubernetes.io/csi/<driver>/<sha256(volumeHandle)>/globalmount`` (NodeStageVolume,
only when the driver advertises STAGE_UNSTAGE_VOLUME) and ``set_up`` publishes per pod to
``<pod volume dir>/mount`` (NodePublishVolume). Inline ephemeral volumes skip the device layer
and are published per pod with a per-pod volume handle.

The on-disk metadata is kubelet's, so reconstruction after a restart (ours or a migrating
kubelet's) can read it: ``vol_data.json`` beside ``globalmount`` (``volumeHandle``,
``driverName``) and beside the pod's ``mount`` (``specVolID``, ``volumeHandle``, ``driverName``,
``nodeName``, ``attachmentID``, ``volumeLifecycleMode``).

Deletion is safe by construction: directories are removed with ``rmdir`` only, and only when
they are not mount points; data in a volume is never touched by this plugin.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from operation_executor.errors import FinalError, OperationError, UncertainError, WaitingError
from operation_executor.plugin import FS_GROUP_MOUNT_GROUP, FS_GROUP_WALK, PluginHost, StagedDevice, VolumePlugin
from operation_executor.types import BLOCK, PodRef, SecretRef, VolumeSpec
from volumemanager.csi.registry import DriverInfo, DriverRegistry
from volumemanager.manifests.models import CSISource

if TYPE_CHECKING:  # the client imports gRPC: loaded when a CSI volume is first handled
    from volumemanager.csi.client import CSINodeClient

log = logging.getLogger(__name__)

PublishContextLookup = Callable[[str, str, "str | None"], Mapping[str, str]]

PLUGIN_NAME = "kubernetes.io/csi"
VOL_DATA_FILE = "vol_data.json"
GLOBAL_MOUNT_DIR = "globalmount"
POD_MOUNT_DIR = "mount"
DIR_MODE = 0o750

CAP_STAGE = "STAGE_UNSTAGE_VOLUME"
CAP_EXPAND = "EXPAND_VOLUME"
CAP_STATS = "GET_VOLUME_STATS"
CAP_SNMW = "SINGLE_NODE_MULTI_WRITER"
CAP_MOUNT_GROUP = "VOLUME_MOUNT_GROUP"

# CSIDriver.spec.fsGroupPolicy values; without a CSIDriver object the kubelet's default.
FS_GROUP_POLICY_NONE = "None"
FS_GROUP_POLICY_FILE = "File"
FS_GROUP_POLICY_RWO_FSTYPE = "ReadWriteOnceWithFSType"
DEFAULT_FS_GROUP_POLICY = FS_GROUP_POLICY_RWO_FSTYPE
_RWO_MODES = ("ReadWriteOnce", "ReadWriteOncePod")

# How operations are called in CSI terms, for people who know their driver's log.
CSI_CALL_NAMES = {
    "MountDevice": "NodeStageVolume",
    "SetUp": "NodePublishVolume",
    "TearDown": "NodeUnpublishVolume",
    "UnmountDevice": "NodeUnstageVolume",
}

LIFECYCLE_PERSISTENT = "Persistent"
LIFECYCLE_EPHEMERAL = "Ephemeral"

# volume_context keys kubelet adds (csi_mounter.go): ephemeral marker and podInfoOnMount.
CTX_EPHEMERAL = "csi.storage.k8s.io/ephemeral"
CTX_POD_NAME = "csi.storage.k8s.io/pod.name"
CTX_POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace"
CTX_POD_UID = "csi.storage.k8s.io/pod.uid"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def attachment_id(volume_handle: str, driver: str, node_name: str) -> str:
    """kubelet's getAttachmentName: ``csi-<sha256(handle + driver + node)>``."""
    return "csi-" + sha256_hex(volume_handle + driver + node_name)


def inline_volume_handle(pod_uid: str, spec_name: str) -> str:
    """kubelet's makeVolumeHandle for ephemeral inline volumes: ``csi-<sha256(podUID + name)>``."""
    return "csi-" + sha256_hex(pod_uid + spec_name)


def _write_json(path: str, data: Mapping[str, str]) -> None:
    """Write ``data`` atomically (temp file + rename) so a crash never leaves half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(dict(data), f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_vol_data(path: str) -> dict[str, str] | None:
    """The JSON object in ``path``, or None when it does not exist. A corrupt file is a
    ``FinalError`` naming the file: guessing the driver from a broken file could unstage the
    wrong volume."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise FinalError(f"cannot read {path}: {err}", code="BAD_VOL_DATA") from None
    if not isinstance(data, dict):
        raise FinalError(f"{path} does not hold a JSON object", code="BAD_VOL_DATA")
    return {str(k): str(v) for k, v in data.items()}


def _read_vol_data_leniently(path: str) -> dict:
    """``vol_data.json`` at restart: a missing or unreadable file is no data (the volume is then
    handled as one without a spec), never a reason to stop the reconstruction."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def spec_from_vol_data(name: str, vol_data: Mapping[str, Any]) -> VolumeSpec | None:
    """A spec rebuilt from a saved ``vol_data.json``; None without a driver name."""
    driver = vol_data.get("driverName")
    handle = vol_data.get("volumeHandle")
    if not isinstance(driver, str) or not driver:
        return None
    ephemeral = vol_data.get("volumeLifecycleMode") == LIFECYCLE_EPHEMERAL
    source = CSISource(driver=driver, volume_handle=None if ephemeral else handle, fs_type=None,
                       volume_attributes={}, read_only=False)
    return VolumeSpec(name=vol_data.get("specVolID") or name, plugin_name=PLUGIN_NAME, source=source, pv_name=name)


def _remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rmdir_if_empty(path: str) -> bool:
    """rmdir ``path``; True when it is gone. Never recursive: a non-empty dir is left alone."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
            return False
        raise
    return True


class CSIPlugin(VolumePlugin):
    """See the module doc. ``registry`` tells which drivers are registered and hands out clients."""

    name = PLUGIN_NAME

    def __init__(self, host: PluginHost, registry: DriverRegistry,
                 fs_group_policy: Callable[[str], str | None] | None = None,
                 publish_context: PublishContextLookup | None = None) -> None:
        super().__init__(host)
        self.registry = registry
        # (driver, volume handle, PV name) -> the publish_context of the volume's attachment
        # ({} when it needs none); raises WaitingError until ControllerPublishVolume succeeded.
        self._publish_context_of = publish_context
        # driver name -> its CSIDriver object's fsGroupPolicy, None when there is no such
        # object (the desired state's snapshot; the kubelet reads the API server's).
        self._fs_group_policy_of = fs_group_policy

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def _source(spec: VolumeSpec) -> Any:
        src = spec.source
        for attr in ("driver", "volume_handle", "volume_attributes"):
            if not hasattr(src, attr):
                raise FinalError(f"volume {spec.name}: source is not a CSI source (no {attr})", code="BAD_SPEC")
        return src

    def _driver(self, driver: str) -> tuple[DriverInfo, CSINodeClient]:
        info = self.registry.get(driver)
        if info is not None:
            try:
                return info, self.registry.client(driver)
            except KeyError:  # deregistered between the two calls
                pass
        raise WaitingError(
            f"CSI driver {driver} is not registered on this node",
            waiting_for=f"CSI driver {driver}",
            code="DRIVER_NOT_REGISTERED",
        )

    def _is_mount_point(self, path: str) -> bool:
        mounter = self.host.mounter
        if mounter is not None:
            return bool(mounter.is_mount_point(path))
        from mount_utils.mountinfo import MountTable

        return MountTable.read().is_mount_point(path)

    def _secrets(self, ref: SecretRef | None) -> dict[str, str]:
        """The Secret's data as CSI wants it (string values). Never logged."""
        if ref is None:
            return {}
        data = self.host.get_secret(ref)
        if data is None:
            raise WaitingError(
                f"secret {ref.namespace}/{ref.name} not found",
                waiting_for=f"secret {ref.namespace}/{ref.name}",
                code="SECRET_NOT_FOUND",
            )
        out: dict[str, str] = {}
        for key, value in data.items():
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise FinalError(
                        f"secret {ref.namespace}/{ref.name} key {key!r} is not UTF-8 text", code="BAD_SECRET"
                    ) from None
            out[str(key)] = str(value)
        return out

    def _capability(self, spec: VolumeSpec, info: DriverInfo) -> Any:
        from volumemanager.csi.client import access_mode, volume_capability

        src = self._source(spec)
        mount_group = ""
        if spec.fs_group is not None and info.has(CAP_MOUNT_GROUP):
            mount_group = str(int(spec.fs_group))  # the spec: a decimal group id on Linux
        return volume_capability(
            block=spec.volume_mode == BLOCK,
            access=access_mode(spec.access_modes, info.has(CAP_SNMW)),
            fs_type=src.fs_type or "",
            mount_flags=spec.mount_options,
            volume_mount_group=mount_group,
        )

    # --- fsGroup (the kubelet's csi_mounter supportsFSGroup and csi_attacher) -------------

    def fs_group_policy(self, driver: str) -> str:
        """The driver's CSIDriver fsGroupPolicy; ReadWriteOnceWithFSType without one."""
        policy = self._fs_group_policy_of(driver) if self._fs_group_policy_of is not None else None
        return policy or DEFAULT_FS_GROUP_POLICY

    def _fs_group_walk_refusal(self, spec: VolumeSpec) -> str | None:
        """Why the kubelet would not walk this volume (None: it would)."""
        src = self._source(spec)
        policy = self.fs_group_policy(src.driver)
        if policy == FS_GROUP_POLICY_NONE:
            return f"CSIDriver {src.driver} has fsGroupPolicy None"
        if policy == FS_GROUP_POLICY_FILE:
            return None
        if not src.fs_type:
            return f"fsGroupPolicy {policy}: the volume has no fsType"
        if not src.volume_handle or not any(m in _RWO_MODES for m in spec.access_modes):
            return f"fsGroupPolicy {policy}: the volume is not ReadWriteOnce"
        return None

    def fs_group_mode(self, spec: VolumeSpec) -> str | None:
        """A driver with the VOLUME_MOUNT_GROUP node capability gets the group in
        ``volume_mount_group`` and applies it itself; like the kubelet this does not depend
        on fsGroupPolicy. Otherwise the policy says whether the tree is walked."""
        info = self.registry.get(self._source(spec).driver)
        if info is not None and info.has(CAP_MOUNT_GROUP):
            return FS_GROUP_MOUNT_GROUP
        return FS_GROUP_WALK if self._fs_group_walk_refusal(spec) is None else None

    def fs_group_skip_reason(self, spec: VolumeSpec) -> str:
        return self._fs_group_walk_refusal(spec) or super().fs_group_skip_reason(spec)

    def _read_only(self, spec: VolumeSpec) -> bool:
        return bool(spec.read_only or getattr(spec.source, "read_only", False))

    def _handle(self, spec: VolumeSpec, pod: PodRef | None) -> str:
        src = self._source(spec)
        if src.volume_handle:
            return str(src.volume_handle)
        if pod is None:
            raise FinalError(f"volume {spec.name}: inline CSI volume needs a pod", code="BAD_SPEC")
        return inline_volume_handle(pod.uid, spec.name)

    def _publish_context(self, spec: VolumeSpec) -> dict[str, str]:
        """The attachment's publish_context for NodeStage/NodePublish of a PV (the kubelet's
        devicePath / VolumeAttachment attachmentMetadata); {} for inline volumes."""
        src = self._source(spec)
        if not src.volume_handle or self._publish_context_of is None:
            return {}
        return dict(self._publish_context_of(src.driver, src.volume_handle, spec.pv_name))

    def _staged(self, spec: VolumeSpec, info: DriverInfo) -> bool:
        return self.is_device_mountable(spec) and info.has(CAP_STAGE)

    # --- identity -------------------------------------------------------------------------

    def can_support(self, source: object) -> bool:
        return isinstance(source, CSISource)

    # --- on-disk knowledge ----------------------------------------------------------------

    def pod_mount_path_on_disk(self, volume_dir: str, block: bool) -> str:
        return volume_dir if block else os.path.join(volume_dir, POD_MOUNT_DIR)

    def construct_volume_spec(self, volume_name: str, volume_dir: str) -> VolumeSpec | None:
        return spec_from_vol_data(volume_name, _read_vol_data_leniently(os.path.join(volume_dir, VOL_DATA_FILE)))

    def find_staged_devices(self) -> Iterable[StagedDevice]:
        """``<plugin dir>/<driver>/<sha256 of the handle>/globalmount`` with its ``vol_data.json``."""
        csi_dir = self.host.plugin_dir(self.name)
        for driver in _listdir(csi_dir):
            for sha in _listdir(os.path.join(csi_dir, driver)):
                vol_data = _read_vol_data_leniently(os.path.join(csi_dir, driver, sha, VOL_DATA_FILE))
                spec = spec_from_vol_data(vol_data.get("volumeHandle", sha), vol_data)
                if spec is None or spec.source.volume_handle is None:
                    continue
                yield StagedDevice(self.volume_id(spec, None), os.path.join(csi_dir, driver, sha, GLOBAL_MOUNT_DIR),
                                   spec)

    def operation_label(self, operation: str) -> str:
        return CSI_CALL_NAMES.get(operation, operation)

    def device_mount_is_mount_point(self, spec: VolumeSpec) -> bool:
        return False  # a driver may stage without a mount: the directory is the stage

    def is_device_mountable(self, spec: VolumeSpec) -> bool:
        # kubelet's CanDeviceMount: false only for ephemeral inline volumes.
        return bool(self._source(spec).volume_handle)

    def operation_lane(self, spec: VolumeSpec) -> str:
        """One lane per driver: a driver answering one call at a time holds up only its own
        volumes, never an emptyDir, a hostPath or another driver's."""
        driver = getattr(spec.source, "driver", "") or "?"
        return f"csi:{driver}"

    def attachable_volume_name(self, spec: VolumeSpec) -> str | None:
        """``kubernetes.io/csi/<driver>^<handle>`` (csi_plugin.go GetVolumeName); inline
        ephemeral volumes (no handle) are never attached."""
        src = spec.source
        if getattr(src, "volume_handle", None) and getattr(src, "driver", None):
            return f"{self.name}/{src.driver}^{src.volume_handle}"
        return None

    def volume_id(self, spec: VolumeSpec, pod: PodRef) -> str:
        src = self._source(spec)
        if src.volume_handle:
            return f"{self.name}/{src.driver}^{src.volume_handle}"
        return f"{self.name}/{pod.uid}-{spec.name}"

    # --- device layer ---------------------------------------------------------------------

    def wait_for_device(self, spec: VolumeSpec) -> str | None:
        self._driver(self._source(spec).driver)
        self._publish_context(spec)  # attached first (ControllerPublishVolume), like the kubelet's WaitForAttach
        return None

    def device_mount_path(self, spec: VolumeSpec) -> str | None:
        src = self._source(spec)
        if not src.volume_handle:
            return None
        return os.path.join(
            self.host.plugin_dir(self.name), src.driver, sha256_hex(src.volume_handle), GLOBAL_MOUNT_DIR
        )

    def mount_device(self, spec: VolumeSpec, device_path: str | None, device_mount_path: str) -> None:
        src = self._source(spec)
        if not src.volume_handle:
            raise FinalError(f"volume {spec.name}: inline CSI volumes have no device layer", code="BAD_SPEC")
        info, client = self._driver(src.driver)
        publish_context = self._publish_context(spec)
        sha_dir = os.path.dirname(device_mount_path)
        os.makedirs(device_mount_path, mode=DIR_MODE, exist_ok=True)
        _write_json(
            os.path.join(sha_dir, VOL_DATA_FILE), {"volumeHandle": src.volume_handle, "driverName": src.driver}
        )
        if not info.has(CAP_STAGE):
            # kubelet: "STAGE_UNSTAGE_VOLUME capability not set. Skipping MountDevice..."; the
            # metadata file stays, unmount_device needs it.
            log.info("CSI driver %s has no %s: %s staged by metadata only", src.driver, CAP_STAGE, spec.name)
            return
        secrets = self._secrets(src.node_stage_secret_ref)
        try:
            client.node_stage_volume(
                volume_id=src.volume_handle,
                staging_target_path=device_mount_path,
                volume_capability=self._capability(spec, info),
                secrets=secrets,
                volume_context=dict(src.volume_attributes or {}),
                publish_context=publish_context,
            )
        except FinalError:
            # Certainly not staged: leave nothing behind (kubelet removes the mount dir too).
            self._remove_device_dir(device_mount_path)
            raise

    def unmount_device(self, spec: VolumeSpec, device_mount_path: str) -> None:
        sha_dir = os.path.dirname(device_mount_path)
        data_path = os.path.join(sha_dir, VOL_DATA_FILE)
        data = read_vol_data(data_path)
        src = self._source(spec)
        driver = (data or {}).get("driverName") or src.driver
        handle = (data or {}).get("volumeHandle") or src.volume_handle
        if data is None and not os.path.exists(device_mount_path):
            return  # never staged, or already cleaned up (kubelet: no vol_data.json -> success)
        info, client = self._driver(driver)
        if info.has(CAP_STAGE) and handle:
            try:
                client.node_unstage_volume(handle, device_mount_path)
            except FinalError as err:
                if err.code != "NOT_FOUND":
                    raise
                log.info("NodeUnstageVolume of %s on %s: NOT_FOUND, treating as unstaged", handle, driver)
        self._remove_device_dir(device_mount_path)

    def _remove_device_dir(self, device_mount_path: str) -> None:
        if self._is_mount_point(device_mount_path):
            raise UncertainError(f"{device_mount_path} is still mounted after unstaging", code="STILL_MOUNTED")
        if not _rmdir_if_empty(device_mount_path):
            raise FinalError(f"{device_mount_path} is not empty after unstaging; left in place", code="NOT_EMPTY")
        sha_dir = os.path.dirname(device_mount_path)
        _remove_file(os.path.join(sha_dir, VOL_DATA_FILE))
        _rmdir_if_empty(sha_dir)

    # --- pod layer ------------------------------------------------------------------------

    def mount_path(self, spec: VolumeSpec, pod: PodRef, outer_name: str) -> str:
        if spec.volume_mode == BLOCK:
            return os.path.join(self.host.pod_volume_device_dir(pod.uid, self.name), spec.name)
        return os.path.join(self.host.pod_volume_dir(pod.uid, self.name, spec.name), POD_MOUNT_DIR)

    def _vol_data_path(self, spec: VolumeSpec, pod: PodRef) -> str | None:
        """The pod-level metadata file; None for Block volumes, whose pod path is the device
        node itself (kubelet keeps block metadata under plugins/.../volumeDevices instead)."""
        if spec.volume_mode == BLOCK:
            return None
        return os.path.join(self.host.pod_volume_dir(pod.uid, self.name, spec.name), VOL_DATA_FILE)

    def set_up(self, spec: VolumeSpec, pod: PodRef, outer_name: str, device_mount_path: str | None) -> None:
        src = self._source(spec)
        info, client = self._driver(src.driver)
        handle = self._handle(spec, pod)
        target = self.mount_path(spec, pod, outer_name)
        parent = os.path.dirname(target)
        ephemeral = not src.volume_handle

        staging = ""
        if self._staged(spec, info):
            staging = device_mount_path or self.device_mount_path(spec) or ""
        volume_context = dict(src.volume_attributes or {})
        if ephemeral:
            volume_context.update(
                {CTX_EPHEMERAL: "true", CTX_POD_NAME: pod.name, CTX_POD_NAMESPACE: pod.namespace, CTX_POD_UID: pod.uid}
            )
        secrets = self._secrets(src.node_publish_secret_ref)
        capability = self._capability(spec, info)
        publish_context = self._publish_context(spec)

        # The CO creates the parent; the driver creates the target itself (CSI spec).
        os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
        data_path = self._vol_data_path(spec, pod)
        if data_path is not None:
            _write_json(
                data_path,
                {
                    "specVolID": spec.name,
                    "volumeHandle": handle,
                    "driverName": src.driver,
                    "nodeName": self.host.node_name,
                    "attachmentID": attachment_id(handle, src.driver, self.host.node_name),
                    "volumeLifecycleMode": LIFECYCLE_EPHEMERAL if ephemeral else LIFECYCLE_PERSISTENT,
                },
            )
        try:
            client.node_publish_volume(
                volume_id=handle,
                target_path=target,
                volume_capability=capability,
                readonly=self._read_only(spec),
                staging_target_path=staging,
                secrets=secrets,
                volume_context=volume_context,
                publish_context=publish_context,
            )
        except FinalError:
            # Certainly not published: remove what we created (kubelet removeMountDir), but
            # only what is empty and unmounted.
            self._cleanup_pod_dir(spec, target, data_path, remove_target=True)
            raise

    def tear_down(self, spec: VolumeSpec, pod: PodRef, outer_name: str, mount_path: str) -> None:
        src = self._source(spec)
        data_path = self._vol_data_path(spec, pod)
        data = read_vol_data(data_path) if data_path else None
        driver = (data or {}).get("driverName") or src.driver
        handle = (data or {}).get("volumeHandle") or self._handle(spec, pod)
        _, client = self._driver(driver)
        try:
            try:
                client.node_unpublish_volume(handle, mount_path)
            except FinalError as err:
                if err.code != "NOT_FOUND":
                    raise
                log.info("NodeUnpublishVolume of %s at %s: NOT_FOUND, treating as unpublished", handle, mount_path)
            self._cleanup_pod_dir(spec, mount_path, data_path, remove_target=True)
        except OperationError as err:
            self._name_holders(err, mount_path)
            raise

    def _name_holders(self, err: OperationError, target: str) -> None:
        """A driver that cannot unmount a busy target says so in its own words: when the
        target is still mounted, add the processes holding it to the error for status."""
        if err.holders or isinstance(err, WaitingError):
            return
        try:
            if not self._is_mount_point(target):
                return
        except OSError:
            return
        from volumemanager.plugins.fsutil import holders_of

        holders = holders_of(target)
        if holders:
            from mount_utils.holders import describe_holders

            err.holders = holders
            err.message = f"{err.message}; held by {describe_holders(holders)}"

    def _cleanup_pod_dir(self, spec: VolumeSpec, target: str, data_path: str | None, remove_target: bool) -> None:
        if os.path.lexists(target):
            if self._is_mount_point(target):
                raise UncertainError(f"{target} is still mounted", code="STILL_MOUNTED")
            if remove_target:
                if os.path.isdir(target) and not os.path.islink(target):
                    if not _rmdir_if_empty(target):
                        raise FinalError(f"{target} is not empty after unpublishing; left in place", code="NOT_EMPTY")
                elif os.path.isfile(target) and os.path.getsize(target) == 0:
                    _remove_file(target)  # a Block target the driver left behind (empty file)
        if data_path is not None:
            _remove_file(data_path)
            _rmdir_if_empty(os.path.dirname(data_path))

    # --- optional capabilities ------------------------------------------------------------

    def expand(self, spec: VolumeSpec, device_path: str | None, device_mount_path: str | None) -> int | None:
        src = self._source(spec)
        info, client = self._driver(src.driver)
        if not info.has(CAP_EXPAND) or not src.volume_handle or not device_mount_path:
            return None
        staging = device_mount_path if info.has(CAP_STAGE) else ""
        size = client.node_expand_volume(
            volume_id=src.volume_handle,
            volume_path=device_mount_path,
            required_bytes=spec.capacity_bytes or 0,
            staging_target_path=staging,
            volume_capability=self._capability(spec, info),
            secrets=self._secrets(src.node_expand_secret_ref),
        )
        return size or spec.capacity_bytes

    def volume_stats(self, spec: VolumeSpec, mount_path: str) -> Mapping[str, int] | None:
        src = self._source(spec)
        info = self.registry.get(src.driver)
        if info is None or not info.has(CAP_STATS):
            return None
        _, client = self._driver(src.driver)
        handle = src.volume_handle or ""
        if not handle:
            # Inline volumes: the per-pod handle is recorded beside the pod's mount directory.
            data = read_vol_data(os.path.join(os.path.dirname(mount_path), VOL_DATA_FILE))
            handle = (data or {}).get("volumeHandle", "")
            if not handle:
                return None
        staging = (self.device_mount_path(spec) or "") if self._staged(spec, info) else ""
        return client.node_get_volume_stats(handle, mount_path, staging)
