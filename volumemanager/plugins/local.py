"""The ``local`` PersistentVolume plugin (``kubernetes.io/local-volume``), like the kubelet's.

A local PV's ``spec.local.path`` is either a directory or a block device on this node:

* **directory**: no device layer; each pod gets a bind mount of the directory.
* **block device, volumeMode Filesystem**: device-mountable. The device is formatted only if
  blank (never one with a partition table or unknown data) and mounted once at
  ``<root>/plugins/kubernetes.io/local-volume/mounts/<pv name>``; pods get bind mounts of that.
* **block device, volumeMode Block**: no filesystem is touched; each pod gets the device node
  bind-mounted onto an empty file at ``<root>/pods/<uid>/volumeDevices/kubernetes.io~local-volume/<name>``.

Which of the two a path is must be decided *before* it exists (the device may not be attached
yet, and a volume's id depends on it), so: an existing path is what it is; a missing path under
``/dev/`` is a device, anything else a directory. The answer is stable because a path under
``/dev/`` that later turns out to be a directory is an odd, unsupported configuration.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import Iterable, Mapping

from mount_utils.blank import DeviceCheckError, DeviceInUseError, DeviceOpenError
from mount_utils.cleanup import cleanup_mount_point
from mount_utils.device import (
    block_device_ready,
    device_not_ready_reason,
    device_size_bytes,
    major_minor,
    resolve_device,
)
from mount_utils.format import (
    FilesystemMismatchError,
    FormatError,
    RefuseToFormatError,
    format_and_mount,
    resize_filesystem,
)
from mount_utils.options import validate_mount_options
from mount_utils.paths import PathSafetyError, safe_create_file, safe_makedirs
from operation_executor.errors import FinalError, TransientError, UncertainError, WaitingError
from operation_executor.plugin import FS_GROUP_WALK, StagedDevice, VolumePlugin
from operation_executor.types import BLOCK, PodRef, VolumeSpec
from volumemanager.bounded_io import stats_from_statvfs
from volumemanager.manifests.models import LocalSource

log = logging.getLogger(__name__)

PLUGIN_NAME = "kubernetes.io/local-volume"
DEFAULT_FS_TYPE = "ext4"
DEV_PREFIX = "/dev/"
GLOBAL_MOUNTS_DIR = "mounts"  # <plugin dir>/mounts/<pv>: a device PV's global mount

#: Modes of what we create: the global mount dir and pod dirs are not for other users; the
#: empty file a block device is bound onto only needs to exist.
DIR_MODE = 0o750
BLOCK_FILE_MODE = 0o600


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def is_device_path(path: str) -> bool:
    """Whether a local PV path names a block device (see the module docstring for the rule)."""
    try:
        st = os.stat(path)
    except OSError:
        return path.startswith(DEV_PREFIX)
    if stat.S_ISBLK(st.st_mode):
        return True
    if stat.S_ISDIR(st.st_mode):
        return False
    return path.startswith(DEV_PREFIX)


def _format_error_is_uncertain(err: FormatError) -> bool:
    """mkfs/fsck killed by a signal or timed out: the device may be half-written."""
    return err.uncertain


class LocalPlugin(VolumePlugin):
    """``spec.source`` is duck-typed: ``.path`` and ``.fs_type`` (``LocalSource``)."""

    name = PLUGIN_NAME
    statvfs_stats = True

    def can_support(self, source: object) -> bool:
        return isinstance(source, LocalSource)

    def fs_group_mode(self, spec: VolumeSpec) -> str | None:
        return FS_GROUP_WALK  # the kubelet's local volumes take the pod's fsGroup (not read-only ones)

    def find_staged_devices(self) -> Iterable[StagedDevice]:
        """Every ``<plugin dir>/mounts/<pv>``: the global mounts of device PVs."""
        mounts = os.path.join(self.host.plugin_dir(self.name), GLOBAL_MOUNTS_DIR)
        for pv in _listdir(mounts):
            spec = VolumeSpec(name=pv, plugin_name=self.name, source=None, pv_name=pv)
            yield StagedDevice(f"{self.name}/{pv}", os.path.join(mounts, pv), spec)

    def __init__(self, host) -> None:
        super().__init__(host)
        # Device size at the last successful expand, per PV: ext4's statvfs size is always
        # below the device size (metadata overhead), so without this every call would run
        # resize2fs. Lost on restart, which only costs one no-op resize.
        self._expanded_size: dict[str, int] = {}

    # --- identity -------------------------------------------------------------------------

    def _is_device(self, spec: VolumeSpec) -> bool:
        return is_device_path(spec.source.path)

    def _is_block_mode(self, spec: VolumeSpec) -> bool:
        return spec.volume_mode == BLOCK

    def is_device_mountable(self, spec: VolumeSpec) -> bool:
        return self._is_device(spec) and not self._is_block_mode(spec)

    def _fs_type(self, spec: VolumeSpec) -> str:
        return getattr(spec.source, "fs_type", None) or DEFAULT_FS_TYPE

    def _mount_options(self, spec: VolumeSpec) -> tuple[str, ...]:
        try:
            return validate_mount_options(tuple(spec.mount_options))
        except ValueError as err:
            raise FinalError(f"invalid mountOptions of volume {spec.name}: {err}",
                             code="INVALID_MOUNT_OPTIONS") from None

    # --- device layer ---------------------------------------------------------------------

    @staticmethod
    def _not_ready(path: str) -> WaitingError:
        """The wait for a device, saying why it is not usable yet (it does not exist, size 0,
        no device registered at its number: open fails with ENXIO ...), so that a node that
        will never work is told from one that is not attached yet. Never "blank"."""
        why = device_not_ready_reason(path)
        return WaitingError(f"waiting for device {path}" + (f": {why}" if why else ""),
                            waiting_for=f"device {path}", code="DEVICE_NOT_READY")

    def _ready_device(self, spec: VolumeSpec) -> str:
        path = spec.source.path
        if not block_device_ready(path):
            raise self._not_ready(path)
        try:
            return resolve_device(path)
        except (OSError, ValueError):
            # Gone or replaced between the two checks: the next device event brings us back.
            raise self._not_ready(path) from None

    def wait_for_device(self, spec: VolumeSpec) -> str | None:
        """The resolved device node when it is usable; WaitingError naming it otherwise;
        None for a directory PV."""
        if not self._is_device(spec):
            return None
        return self._ready_device(spec)

    def device_mount_path(self, spec: VolumeSpec) -> str | None:
        if not self.is_device_mountable(spec):
            return None
        return os.path.join(self.host.plugin_dir(self.name), GLOBAL_MOUNTS_DIR, spec.name)

    def mount_device(self, spec: VolumeSpec, device_path: str | None, device_mount_path: str) -> None:
        """Format the device if (and only if) it is blank, and mount it at the global path."""
        mounter = self.host.mounter
        options = self._mount_options(spec)
        device = device_path or spec.source.path
        if not block_device_ready(device):
            # Re-checked even when the caller just waited for it: it may have gone since, and
            # ``blkid -p`` reports a missing or empty device as blank (exit 2).
            raise self._not_ready(spec.source.path)
        self._makedirs(device_mount_path)
        if mounter.is_mount_point(device_mount_path):
            self._check_global_mount_is_device(device, device_mount_path)
            return
        fs_type = self._fs_type(spec)
        try:
            formatted = format_and_mount(mounter, device, device_mount_path, fs_type, options,
                                         format_marker=self._format_marker(spec))
        except RefuseToFormatError as err:
            self._rmdir_if_unmounted(device_mount_path)
            raise FinalError(f"{err}; local PV {spec.name} was left untouched",
                             code="REFUSE_TO_FORMAT") from None
        except FilesystemMismatchError as err:
            self._rmdir_if_unmounted(device_mount_path)
            raise FinalError(f"{err}; local PV {spec.name} was left untouched",
                             code="FILESYSTEM_MISMATCH") from None
        except DeviceCheckError as err:
            if err.uncertain:  # a hung device or a killed probe: nothing was written, retry
                raise UncertainError(f"inspecting {device} for local PV {spec.name}: {err}",
                                     code="FORMAT_UNCERTAIN") from None
            self._rmdir_if_unmounted(device_mount_path)
            code = ("DEVICE_IN_USE" if isinstance(err, DeviceInUseError)
                    else "DEVICE_OPEN_FAILED" if isinstance(err, DeviceOpenError) else "FORMAT_FAILED")
            raise FinalError(f"{err}; local PV {spec.name} was left untouched", code=code) from None
        except FormatError as err:
            if _format_error_is_uncertain(err):
                raise UncertainError(f"preparing {device} for local PV {spec.name}: {err}",
                                     code="FORMAT_UNCERTAIN") from None
            self._rmdir_if_unmounted(device_mount_path)
            raise FinalError(f"preparing {device} for local PV {spec.name}: {err}", code="FORMAT_FAILED") from None
        except ValueError as err:  # the mounter refused its arguments: nothing was done
            self._rmdir_if_unmounted(device_mount_path)
            raise FinalError(f"mounting {device} at {device_mount_path}: {err}", code="MOUNT_FAILED") from None
        except OSError as err:
            if getattr(err, "uncertain", False) or self._mounted_or_unknown(device_mount_path):
                raise UncertainError(f"mounting {device} at {device_mount_path}: {err}",
                                     code="MOUNT_UNCERTAIN") from None
            self._rmdir_if_unmounted(device_mount_path)
            raise FinalError(f"mounting {device} at {device_mount_path}: {err}", code="MOUNT_FAILED") from None
        log.info("local PV %s: %s %smounted at %s", spec.name, device,
                 f"formatted as {fs_type} and " if formatted else "", device_mount_path)

    def _format_marker(self, spec: VolumeSpec) -> str:
        """Where "a format of this PV's blank device is in progress" is recorded (see
        `mount_utils.format`): ``<plugin dir>/formatting/<pv name>``, beside ``mounts/``."""
        marker_dir = os.path.join(self.host.plugin_dir(self.name), "formatting")
        self._makedirs(marker_dir)
        return os.path.join(marker_dir, spec.name)

    def _check_global_mount_is_device(self, device: str, device_mount_path: str) -> None:
        """An existing global mount must be of our device; anything else is a conflict that a
        retry cannot fix, and mounting over it would hide it."""
        real = os.path.realpath(device_mount_path)
        try:
            if not self.host.mounter.is_mount_point(real):
                return  # the usual case, found with one statx instead of a parse of the table
        except OSError:
            return
        top = self.host.mounter.mount_table().top(real)
        if top is None:
            return
        try:
            dev = major_minor(device)
        except (OSError, ValueError):
            return
        if (top.major, top.minor) != dev:
            raise FinalError(
                f"{device_mount_path} is already a mount of {top.source} ({top.major}:{top.minor}), "
                f"not of {device} ({dev[0]}:{dev[1]})", code="MOUNT_CONFLICT")

    def unmount_device(self, spec: VolumeSpec, device_mount_path: str) -> None:
        """Unmount the global mount and remove its directory; refuse while pods still bind it."""
        mounter = self.host.mounter
        if not os.path.lexists(device_mount_path):
            return
        if mounter.is_mount_point(device_mount_path):
            refs = mounter.mount_refs(device_mount_path)
            if refs:
                shown = ", ".join(refs[:3]) + (f" and {len(refs) - 3} more" if len(refs) > 3 else "")
                raise FinalError(f"device mount path {device_mount_path} is still in use by "
                                 f"{len(refs)} other mount(s): {shown}", code="STILL_IN_USE")
        try:
            cleanup_mount_point(device_mount_path, mounter)
        except OSError as err:
            raise UncertainError(f"unmounting local PV {spec.name} at {device_mount_path}: {err}",
                                 code="UNMOUNT_FAILED") from None
        self._expanded_size.pop(spec.name, None)

    # --- pod layer ------------------------------------------------------------------------

    def mount_path(self, spec: VolumeSpec, pod: PodRef, outer_name: str) -> str:
        if self._is_block_mode(spec):
            return os.path.join(self.host.pod_volume_device_dir(pod.uid, self.name), spec.name)
        return self.host.pod_volume_dir(pod.uid, self.name, spec.name)

    def set_up(self, spec: VolumeSpec, pod: PodRef, outer_name: str, device_mount_path: str | None) -> None:
        if self._is_block_mode(spec):
            self._set_up_block(spec, pod, outer_name)
            return
        mounter = self.host.mounter
        target = self.mount_path(spec, pod, outer_name)
        if mounter.is_mount_point(target):
            return  # already set up (idempotent, e.g. after a restart)
        if self._is_device(spec):
            source = device_mount_path or self.device_mount_path(spec)
            assert source is not None
            if not mounter.is_mount_point(source):
                raise TransientError(f"global mount {source} of local PV {spec.name} is not mounted",
                                     code="DEVICE_NOT_MOUNTED")
        else:
            source = spec.source.path
            if not os.path.isdir(source):
                if os.path.lexists(source):
                    raise FinalError(f"local PV {spec.name}: {source} is neither a directory nor a block device",
                                     code="INVALID_LOCAL_PATH")
                raise WaitingError(f"waiting for directory {source}", waiting_for=f"directory {source}",
                                   code="DIRECTORY_NOT_FOUND")
            # As for a hostPath: a directory in the daemon's own tree would hand a pod other
            # pods' volumes (pods/), or the staged devices (plugins/).
            real, root = os.path.realpath(source), os.path.realpath(self.host.root_dir)
            if real == root or real.startswith(root.rstrip("/") + "/"):
                raise FinalError(f"local PV {spec.name}: {source} is inside the daemon's root dir "
                                 f"{self.host.root_dir}", code="INVALID_LOCAL_PATH")
        self._makedirs(target)
        self._bind(source, target, spec)

    def _makedirs(self, path: str) -> None:
        try:
            safe_makedirs(self.host.root_dir, path, DIR_MODE)
        except PathSafetyError as err:
            raise FinalError(f"refusing to create {path}: {err}", code="UNSAFE_PATH") from None

    def _bind(self, source: str, target: str, spec: VolumeSpec) -> None:
        mounter = self.host.mounter
        try:
            mounter.bind_mount(source, target, read_only=spec.read_only)
        except OSError as err:
            if self._mounted_or_unknown(target):
                raise UncertainError(f"bind mount of {source} on {target}: {err}", code="MOUNT_UNCERTAIN") from None
            self._remove_unmounted(target)
            raise FinalError(f"bind mount of {source} on {target}: {err}", code="MOUNT_FAILED") from None

    def _set_up_block(self, spec: VolumeSpec, pod: PodRef, outer_name: str) -> None:
        """Bind the device node onto an empty file: the pod's path then *is* the device
        (same major:minor) and no filesystem on it is touched."""
        mounter = self.host.mounter
        device = self._ready_device(spec)
        target = self.mount_path(spec, pod, outer_name)
        if mounter.is_mount_point(target):
            return
        try:
            safe_create_file(self.host.root_dir, target, BLOCK_FILE_MODE)
        except (PathSafetyError, IsADirectoryError) as err:
            raise FinalError(f"refusing to create {target}: {err}", code="UNSAFE_PATH") from None
        self._bind(device, target, spec)

    def tear_down(self, spec: VolumeSpec, pod: PodRef, outer_name: str, mount_path: str) -> None:
        """Unmount the pod's view and remove the empty directory / empty file; nothing else."""
        try:
            cleanup_mount_point(mount_path, self.host.mounter)
        except OSError as err:
            # EBUSY names the processes holding the view (code BUSY); retried with backoff.
            from volumemanager.plugins.fsutil import teardown_error

            raise teardown_error(mount_path, err, f"tearing down local PV {spec.name} at {mount_path}") from None

    def _mounted_or_unknown(self, path: str) -> bool:
        try:
            return bool(self.host.mounter.is_mount_point(path))
        except OSError:
            return True

    def _rmdir_if_unmounted(self, path: str) -> None:
        try:
            if not self.host.mounter.is_mount_point(path):
                os.rmdir(path)
        except OSError:
            pass

    def _remove_unmounted(self, path: str) -> None:
        try:
            cleanup_mount_point(path, self.host.mounter)
        except OSError:
            pass

    # --- optional capabilities ------------------------------------------------------------

    def expand(self, spec: VolumeSpec, device_path: str | None, device_mount_path: str | None) -> int | None:
        """Grow the filesystem after the device grew; returns the device's size in bytes.

        Block mode has no filesystem: the pod sees the new size directly. A directory PV
        cannot be expanded (None). The filesystem is resized only when the device is larger
        than it, so calling this again is cheap and harmless.
        """
        if not self._is_device(spec):
            return None
        device = device_path or self._ready_device(spec)
        try:
            size = device_size_bytes(device)
        except (OSError, ValueError) as err:
            raise TransientError(f"cannot read the size of {device}: {err}", code="DEVICE_NOT_READY") from None
        if self._is_block_mode(spec):
            return size
        mount_path = device_mount_path or self.device_mount_path(spec)
        assert mount_path is not None
        if not self.host.mounter.is_mount_point(mount_path):
            raise TransientError(f"cannot expand local PV {spec.name}: {mount_path} is not mounted",
                                 code="DEVICE_NOT_MOUNTED")
        if self._expanded_size.get(spec.name) == size:
            return size
        st = os.statvfs(mount_path)
        if size > st.f_blocks * st.f_frsize:
            fs_type = self._mounted_fs_type(mount_path) or self._fs_type(spec)
            try:
                resize_filesystem(device, mount_path, fs_type)
            except FormatError as err:
                raise FinalError(f"resizing local PV {spec.name} on {device}: {err}", code="RESIZE_FAILED") from None
            log.info("local PV %s: filesystem on %s grown to the device size (%d bytes)", spec.name, device, size)
        self._expanded_size[spec.name] = size
        return size

    def _mounted_fs_type(self, mount_path: str) -> str | None:
        top = self.host.mounter.mount_table().top(os.path.realpath(mount_path))
        return top.fs_type if top is not None else None

    def volume_stats(self, spec: VolumeSpec, mount_path: str) -> Mapping[str, int] | None:
        if self._is_block_mode(spec):
            try:
                return {"capacity_bytes": device_size_bytes(mount_path)}
            except (OSError, ValueError):
                return None
        try:
            st = os.statvfs(mount_path)
        except OSError:
            return None
        return stats_from_statvfs(st)
