"""The FlexVolume plugin: the kubelet's ``pkg/volume/flexvolume`` on top of ``FlexDriver``.

One plugin object (``kubernetes.io/flexvolume``) serves every driver; the drivers themselves
come and go with the prober (``FlexDriverLookup``, normally ``FlexProber``). A volume whose
driver is not installed *waits* for ``FlexVolume driver <vendor/driver>`` (like a CSI driver
that has not registered) instead of being an unsupported source, so installing the driver
later is all it takes; the daemon wakes waiting volumes whenever the prober sees a change.

The layout and the call order are the kubelet's, so that a driver written for the kubelet
sees exactly what it expects:

* pod view: ``pods/<uid>/volumes/<vendor>~<driver>/<name>`` (the driver mounts there itself);
* device mount path of an attachable driver (``init`` capability ``attach``):
  ``plugins/kubernetes.io/flexvolume/<vendor>/<driver>/mounts/<name>``;
* attachable: ``attach`` -> ``waitforattach`` -> ``mountdevice`` (once per node) ->
  ``mount`` (per pod) ... ``unmount`` -> ``unmountdevice`` -> ``detach``;
  not attachable: ``mount`` ... ``unmount``.

``Not supported`` falls back on the kubelet's built-in behaviour (``flexvolume_driver`` module
doc): ``mountdevice`` -> format-and-mount of the attached device (never of a non-blank one),
``mount`` -> bind mount of the device mount path, ``unmount``/``unmountdevice`` -> unmount and
remove the directory, ``attach``/``waitforattach``/``detach`` -> nothing.

Where it differs from the kubelet: there is no attach/detach controller on a single host, so
``attach`` and ``waitforattach`` run in the device step (``mount_device``), and ``detach`` at
the end of ``unmount_device``. Running them there, not in ``wait_for_device``, means that once
``attach`` has succeeded any later failure of the step is *uncertain*: the device is recorded as
possibly staged, so a volume that is no longer wanted still gets ``unmountdevice`` and
``detach`` instead of a device left attached for ever.

A driver's attach capability is remembered for the daemon's life once seen: volume ids and
device paths depend on it, and must not change under a mounted volume when a driver is
removed or re-initialised. Before a driver has ever been seen, a ``mounts/`` directory left
under its plugin dir says it was attachable.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from typing import Iterable, Mapping, Protocol

from mount_utils.blank import DeviceCheckError, DeviceInUseError, DeviceOpenError
from mount_utils.cleanup import cleanup_mount_point
from mount_utils.format import FilesystemMismatchError, FormatError, RefuseToFormatError, format_and_mount
from mount_utils.paths import PathSafetyError, safe_makedirs
from operation_executor.errors import FinalError, OperationError, UncertainError, WaitingError
from operation_executor.plugin import FS_GROUP_WALK, PluginHost, StagedDevice, VolumePlugin
from operation_executor.types import BLOCK, PodRef, SecretRef, VolumeSpec
from volumemanager.manifests.models import FlexVolumeSource
from volumemanager.plugins.flexvolume_driver import (
    DriverNotSupported,
    FlexDriver,
    build_options,
    dir_name_for_driver,
    driver_name_from_dir,
)

log = logging.getLogger(__name__)

PLUGIN_NAME = "kubernetes.io/flexvolume"
MOUNTS_DIR = "mounts"
DIR_MODE = 0o750
DEFAULT_FS_TYPE = "ext4"

# How status names the steps, in the driver's verbs (what its own log shows).
FLEX_CALL_NAMES = {
    "MountDevice": "attach/waitforattach/mountdevice",
    "SetUp": "mount",
    "TearDown": "unmount",
    "UnmountDevice": "unmountdevice/detach",
}


class FlexDriverLookup(Protocol):
    """Which drivers are installed now (``FlexProber``)."""

    def get(self, name: str) -> FlexDriver | None: ...


class NoFlexDrivers:
    """The lookup of a plugin nobody probes for (offline status, unit tests): no driver."""

    def get(self, name: str) -> FlexDriver | None:
        return None


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


class FlexVolumePlugin(VolumePlugin):
    """See the module doc. ``drivers`` tells which drivers are installed."""

    name = PLUGIN_NAME

    def __init__(self, host: PluginHost, drivers: FlexDriverLookup | None = None) -> None:
        super().__init__(host)
        self.drivers: FlexDriverLookup = drivers or NoFlexDrivers()
        self._attach: dict[str, bool] = {}  # driver -> attach capability, once seen
        self._lock = threading.Lock()

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def _source(spec: VolumeSpec) -> FlexVolumeSource:
        src = spec.source
        if not isinstance(getattr(src, "driver", None), str) or not src.driver:
            raise FinalError(f"volume {spec.name}: source is not a FlexVolume source (no driver)", code="BAD_SPEC")
        return src

    def _driver(self, name: str) -> FlexDriver:
        driver = self.drivers.get(name)
        if driver is None:
            raise WaitingError(
                f"FlexVolume driver {name} is not installed (no executable {dir_name_for_driver(name)}/"
                f"{dir_name_for_driver(name).split('~')[-1]} in the volume plugin dir)",
                waiting_for=f"FlexVolume driver {name}",
                code="DRIVER_NOT_FOUND",
            )
        self._remember(name, driver)
        return driver

    def _remember(self, name: str, driver: FlexDriver) -> bool:
        with self._lock:
            if name not in self._attach:
                self._attach[name] = bool(driver.capabilities.attach)
            return self._attach[name]

    def _attachable(self, name: str) -> bool:
        with self._lock:
            known = self._attach.get(name)
        if known is not None:
            return known
        driver = self.drivers.get(name)
        if driver is not None:
            return self._remember(name, driver)
        # Never seen: what an earlier run left on disk is the best guess (not remembered, so
        # the driver's own answer wins once it is installed).
        return os.path.isdir(os.path.join(self._flex_dir(), name, MOUNTS_DIR))

    def _flex_dir(self) -> str:
        return self.host.plugin_dir(self.name)

    def _read_only(self, spec: VolumeSpec) -> bool:
        return bool(spec.read_only or getattr(spec.source, "read_only", False))

    def _options(self, spec: VolumeSpec, pod: PodRef | None = None) -> dict[str, str]:
        """The options JSON of a call (``mount`` gets the pod keys and secrets)."""
        src = self._source(spec)
        secrets = self._secrets(src.secret_ref) if pod is not None else None
        try:
            return build_options(
                pv_or_volume_name=spec.name,
                fs_type=src.fs_type or "",
                read_only=self._read_only(spec),
                pod_name=pod.name if pod is not None else None,
                pod_namespace=pod.namespace if pod is not None else None,
                pod_uid=pod.uid if pod is not None else None,
                service_account_name="" if pod is not None else None,
                secrets=secrets,
                fs_group=spec.fs_group if pod is not None else None,
                user_options=dict(src.options or {}),
            )
        except ValueError as e:
            raise FinalError(f"volume {spec.name}: {e}", code="BAD_SPEC") from None

    def _secrets(self, ref: SecretRef | None) -> Mapping[str, bytes] | None:
        """The Secret's data (the driver gets each value base64-encoded). Never logged."""
        if ref is None:
            return None
        data = self.host.get_secret(ref)
        if data is None:
            raise WaitingError(f"secret {ref.namespace}/{ref.name} not found",
                               waiting_for=f"secret {ref.namespace}/{ref.name}", code="SECRET_NOT_FOUND")
        return data

    def _is_mount_point(self, path: str) -> bool:
        try:
            return bool(self.host.mounter.is_mount_point(path))
        except FileNotFoundError:
            return False

    def _makedirs(self, path: str) -> None:
        try:
            safe_makedirs(self.host.root_dir, path, DIR_MODE)
        except PathSafetyError as err:
            raise FinalError(f"refusing to create {path}: {err}", code="UNSAFE_PATH") from None

    def _remove_dir(self, path: str, what: str) -> None:
        """rmdir a torn-down mount dir; never recursive (the driver may remove it itself)."""
        if not os.path.lexists(path):
            return
        if self._is_mount_point(path):
            raise UncertainError(f"{path} is still mounted after {what}", code="STILL_MOUNTED")
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FinalError(f"{path} is not empty after {what}; left in place", code="NOT_EMPTY") from None
            raise UncertainError(f"removing {path} after {what}: {err}", code="UNMOUNT_FAILED") from None

    def _rmdir_quietly(self, path: str) -> None:
        try:
            if not self._is_mount_point(path):
                os.rmdir(path)
        except OSError:
            pass

    # --- identity and on-disk knowledge ---------------------------------------------------

    @property
    def display_name(self) -> str:
        return "flexvolume"

    def can_support(self, source: object) -> bool:
        return isinstance(source, FlexVolumeSource)

    def owns_pod_dir(self, escaped: str) -> bool:
        """``pods/<uid>/volumes/<vendor>~<driver>``: the kubelet names the pod dir after the
        driver, not the plugin. Claimed for drivers installed now or seen before (never for any
        unknown name: a volume of a plugin we lack is left alone, not handed to a driver)."""
        name = driver_name_from_dir(escaped)
        with self._lock:
            seen = name in self._attach
        return seen or self.drivers.get(name) is not None \
            or os.path.isdir(os.path.join(self._flex_dir(), name, MOUNTS_DIR))

    def construct_volume_spec(self, volume_name: str, volume_dir: str) -> VolumeSpec | None:
        driver = driver_name_from_dir(os.path.basename(os.path.dirname(volume_dir)))
        return VolumeSpec(name=volume_name, plugin_name=self.name, source=_bare_source(driver))

    def find_staged_devices(self) -> Iterable[StagedDevice]:
        """``plugins/kubernetes.io/flexvolume/<vendor>/<driver>/mounts/<name>`` (or
        ``<driver>/mounts/<name>`` for a driver without a vendor)."""
        base = self._flex_dir()
        drivers: list[str] = []
        for first in _listdir(base):
            if os.path.isdir(os.path.join(base, first, MOUNTS_DIR)):
                drivers.append(first)
            for second in _listdir(os.path.join(base, first)):
                if second != MOUNTS_DIR and os.path.isdir(os.path.join(base, first, second, MOUNTS_DIR)):
                    drivers.append(f"{first}/{second}")
        for driver in drivers:
            mounts = os.path.join(base, driver, MOUNTS_DIR)
            for name in _listdir(mounts):
                spec = VolumeSpec(name=name, plugin_name=self.name, source=_bare_source(driver))
                yield StagedDevice(self._device_volume_id(driver, name), os.path.join(mounts, name), spec)

    def operation_label(self, operation: str) -> str:
        return FLEX_CALL_NAMES.get(operation, operation)

    def is_device_mountable(self, spec: VolumeSpec) -> bool:
        return self._attachable(self._source(spec).driver)

    def operation_lane(self, spec: VolumeSpec) -> str:
        """One lane per driver: a driver that hangs holds up only its own volumes."""
        return f"flex:{getattr(spec.source, 'driver', '') or '?'}"

    def _device_volume_id(self, driver: str, name: str) -> str:
        return f"{self.name}/{driver}^{name}"

    def volume_id(self, spec: VolumeSpec, pod: PodRef) -> str:
        """The driver is part of the id: two drivers may each have a volume of one name."""
        driver = self._source(spec).driver
        if self.is_device_mountable(spec):
            return self._device_volume_id(driver, spec.name)
        return f"{self.name}/{driver}^{pod.uid}-{spec.name}"

    # --- device layer (attachable drivers) ------------------------------------------------

    def wait_for_device(self, spec: VolumeSpec) -> str | None:
        """Only that the driver is installed: attach runs in ``mount_device`` (module doc)."""
        self._driver(self._source(spec).driver)
        return None

    def device_mount_path(self, spec: VolumeSpec) -> str | None:
        if not self.is_device_mountable(spec):
            return None
        return os.path.join(self._flex_dir(), self._source(spec).driver, MOUNTS_DIR, spec.name)

    def mount_device(self, spec: VolumeSpec, device_path: str | None, device_mount_path: str) -> None:
        """``attach``, ``waitforattach``, then ``mountdevice`` unless already mounted."""
        src = self._source(spec)
        driver = self._driver(src.driver)
        options = self._options(spec)
        try:
            device = driver.attach(options, self.host.node_name)
        except DriverNotSupported:
            device = ""
        # From here on the device may be attached: a failure must leave the volume possibly
        # staged, so that it is unmounted and detached when it is no longer wanted.
        try:
            try:
                device = driver.wait_for_attach(device, options) or device
            except DriverNotSupported:
                pass
            self._makedirs(device_mount_path)
            if self._is_mount_point(device_mount_path):
                return  # the kubelet's prepareForMount: mount only once
            try:
                driver.mount_device(device_mount_path, device, options)
            except DriverNotSupported:
                if device:
                    self._format_and_mount(spec, device, device_mount_path)
                else:
                    log.info("FlexVolume %s: no device and no mountdevice for %s: nothing to stage",
                             src.driver, spec.name)
        except OperationError as err:
            if isinstance(err, (UncertainError, WaitingError)):
                raise
            raise UncertainError(f"{err.message}; the device stays attached until the volume is torn down",
                                 code=err.code) from None

    def _format_and_mount(self, spec: VolumeSpec, device: str, device_mount_path: str) -> None:
        """The kubelet's default MountDevice: SafeFormatAndMount, here refusing non-blank devices."""
        fs_type = self._source(spec).fs_type or DEFAULT_FS_TYPE
        what = f"FlexVolume {spec.name} (mountdevice not supported by the driver)"
        try:
            format_and_mount(self.host.mounter, device, device_mount_path, fs_type, list(spec.mount_options),
                             read_only=self._read_only(spec))
        except RefuseToFormatError as err:
            raise FinalError(f"{err}; {what}: left untouched", code="REFUSE_TO_FORMAT") from None
        except FilesystemMismatchError as err:
            raise FinalError(f"{err}; {what}: left untouched", code="FILESYSTEM_MISMATCH") from None
        except DeviceCheckError as err:
            code = ("DEVICE_IN_USE" if isinstance(err, DeviceInUseError)
                    else "DEVICE_OPEN_FAILED" if isinstance(err, DeviceOpenError) else "FORMAT_FAILED")
            raise FinalError(f"{err}; {what}: left untouched", code=code) from None
        except FormatError as err:
            raise FinalError(f"preparing {device} for {what}: {err}",
                             code="FORMAT_UNCERTAIN" if err.uncertain else "FORMAT_FAILED") from None
        except (OSError, ValueError) as err:
            raise FinalError(f"mounting {device} at {device_mount_path} for {what}: {err}",
                             code="MOUNT_FAILED") from None

    def unmount_device(self, spec: VolumeSpec, device_mount_path: str) -> None:
        """``unmountdevice`` when mounted (Not supported: unmount), remove the dir, ``detach``."""
        src = self._source(spec)
        driver = self._driver(src.driver)
        if os.path.lexists(device_mount_path):
            if self._is_mount_point(device_mount_path):
                refs = self.host.mounter.mount_refs(device_mount_path)
                if refs:
                    raise FinalError(f"device mount path {device_mount_path} is still in use by "
                                     f"{len(refs)} other mount(s): {', '.join(refs[:3])}", code="STILL_IN_USE")
                try:
                    driver.unmount_device(device_mount_path)
                except DriverNotSupported:
                    self._cleanup(device_mount_path, f"unmounting FlexVolume {spec.name}")
            self._remove_dir(device_mount_path, "unmountdevice")
        try:
            driver.detach(spec.name, self.host.node_name)
        except DriverNotSupported:
            pass

    def _cleanup(self, path: str, what: str) -> None:
        try:
            cleanup_mount_point(path, self.host.mounter)
        except OSError as err:
            from volumemanager.plugins.fsutil import teardown_error

            raise teardown_error(path, err, f"{what} at {path}") from None

    # --- fsGroup ----------------------------------------------------------------------------

    def fs_group_mode(self, spec: VolumeSpec) -> str | None:
        """The kubelet walks a FlexVolume for fsGroup after ``mount`` unless the driver's
        ``init`` said ``fsGroup: false`` (the default is true); it also gets the group in the
        options (``kubernetes.io/mounterArgs.FsGroup``)."""
        driver = self.drivers.get(self._source(spec).driver)
        if driver is not None and not driver.capabilities.fs_group:
            return None
        return FS_GROUP_WALK

    def fs_group_skip_reason(self, spec: VolumeSpec) -> str:
        return f"FlexVolume driver {self._source(spec).driver} said fsGroup: false in its init capabilities"

    # --- pod layer ------------------------------------------------------------------------

    def mount_path(self, spec: VolumeSpec, pod: PodRef, outer_name: str) -> str:
        return self.host.pod_volume_dir(pod.uid, self._source(spec).driver, spec.name)

    def set_up(self, spec: VolumeSpec, pod: PodRef, outer_name: str, device_mount_path: str | None) -> None:
        if spec.volume_mode == BLOCK:
            raise FinalError(f"volume {spec.name}: FlexVolume has no raw block volumes", code="BAD_SPEC")
        src = self._source(spec)
        driver = self._driver(src.driver)
        options = self._options(spec, pod)
        target = self.mount_path(spec, pod, outer_name)
        self._makedirs(target)
        if self._is_mount_point(target):
            return  # the kubelet's prepareForMount: mount only once
        try:
            driver.mount(target, options)
        except DriverNotSupported:
            source = device_mount_path or self.device_mount_path(spec)
            if not source:
                self._rmdir_quietly(target)
                raise FinalError(f"FlexVolume driver {src.driver} supports neither mount nor attach: "
                                 f"volume {spec.name} cannot be set up", code="BAD_SPEC") from None
            try:
                self.host.mounter.bind_mount(source, target, read_only=self._read_only(spec))
            except OSError as err:
                if self._is_mount_point(target):
                    raise UncertainError(f"bind mount of {source} on {target}: {err}", code="MOUNT_UNCERTAIN") from None
                self._rmdir_quietly(target)
                raise FinalError(f"bind mount of {source} on {target}: {err}", code="MOUNT_FAILED") from None
        except OperationError as err:
            if not isinstance(err, UncertainError) and not self._is_mount_point(target):
                self._rmdir_quietly(target)
            raise

    def tear_down(self, spec: VolumeSpec, pod: PodRef, outer_name: str, mount_path: str) -> None:
        """``unmount`` (Not supported: unmount and clean up), then remove the empty dir."""
        if not os.path.lexists(mount_path):
            return  # the kubelet: "Unmount skipped because path does not exist"
        driver = self._driver(self._source(spec).driver)
        try:
            driver.unmount(mount_path)
        except DriverNotSupported:
            self._cleanup(mount_path, f"tearing down FlexVolume {spec.name}")
        self._remove_dir(mount_path, "unmount")


def _bare_source(driver: str) -> FlexVolumeSource:
    """The source of a volume found on disk: the driver is all its reverse calls need."""
    return FlexVolumeSource(driver=driver, fs_type=None, secret_ref=None, read_only=False, options={})
