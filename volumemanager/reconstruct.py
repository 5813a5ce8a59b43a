"""Rebuild the actual state at start-up from the root dir and /proc/self/mountinfo.

Run after the desired state has been read and before the first pass. A pod volume that is
desired and found mounted is *adopted* as mounted: no mount or unmount is issued, so a daemon
restart leaves every mount (and its mount ID) as it was. Anything found that is not desired is
recorded as *uncertain*, which makes the reconciler tear it down with the plugin's reverse
call once it is allowed to unmount. Nothing here mounts, unmounts or deletes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Protocol

from mount_utils.mountinfo import MountPoints, MountTable
from operation_executor.plugin import PluginRegistry, VolumePlugin
from operation_executor.states import DeviceMountState, VolumeMountState
from operation_executor.types import AttachedVolume, MountedVolume, PodRef, VolumeSpec, VolumeToMount
from volumemanager.plugin_host import unescape_plugin_name

log = logging.getLogger(__name__)

# The two kinds of pod volume dirs under ``pods/<uid>/``: filesystem views and block devices.
POD_VOLUME_KINDS = (("volumes", False), ("volumeDevices", True))


class ReconstructedStateWriter(Protocol):
    """The part of the actual state of the world reconstruction writes and reads."""

    def add_reconstructed(self, mv: MountedVolume, device_state: DeviceMountState, device_path: str | None) -> None: ...

    def add_reconstructed_device(self, av: AttachedVolume) -> None: ...

    def get_volume(self, volume_id: str) -> AttachedVolume | None: ...

    def attached_volumes(self) -> list[AttachedVolume]: ...


# Which pod ("namespace/name") a UID found on disk belonged to, from the owner record; None when unknown.
PodOwnerLookup = Callable[[str], "str | None"]


@dataclass
class Reconstruction:
    """What the scan found, for the log and for tests."""

    adopted: int = 0
    uncertain: int = 0
    devices: int = 0
    cleanup_pods: set[str] = field(default_factory=set)

    def counts(self) -> dict[str, int]:
        return {"adopted": self.adopted, "uncertain": self.uncertain, "devices": self.devices}


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _recorded_pod(pod_owner: PodOwnerLookup, uid: str) -> PodRef:
    """The pod a UID found on disk belonged to, from the owner record; else unknown ("?"),
    which never keeps another pod from that UID."""
    key = pod_owner(uid)
    if key and key.count("/") == 1:
        namespace, name = key.split("/")
        return PodRef(uid, namespace, name)
    return PodRef(uid, "?", uid)


def reconstruct_actual_state(
    pods_dir: str,
    plugins: PluginRegistry,
    table: MountTable | MountPoints,
    desired: Iterable[VolumeToMount],
    asw: ReconstructedStateWriter,
    pod_owner: PodOwnerLookup = lambda uid: None,
) -> Reconstruction:
    """Fill ``asw`` from what is under ``pods_dir`` and the plugins' dirs, given the mount
    ``table`` and the ``desired`` volumes. Plugin-agnostic: each plugin says where its pod view
    is, how to rebuild a spec, which stages it may have left and what counts as present."""
    desired_mounts: dict[str, tuple[VolumeToMount, VolumePlugin]] = {}
    desired_devices: dict[str, tuple[VolumeToMount, VolumePlugin]] = {}
    for vtm in desired:
        try:
            plugin = plugins.find(vtm.plugin_name)
        except KeyError:
            continue
        desired_mounts[plugin.mount_path(vtm.spec, vtm.pod, vtm.outer_name)] = (vtm, plugin)
        if vtm.device_mountable:
            dmp = plugin.device_mount_path(vtm.spec)
            if dmp:
                desired_devices[dmp] = (vtm, plugin)
    out = Reconstruction()

    def device_state_of(path: str | None) -> DeviceMountState:
        return DeviceMountState.MOUNTED if path and table.is_mount_point(path) else DeviceMountState.UNCERTAIN

    for uid in _listdir(pods_dir):
        for kind, block in POD_VOLUME_KINDS:
            base = os.path.join(pods_dir, uid, kind)
            for escaped in _listdir(base):
                # Usually the plugin's name; FlexVolume's dirs are named after the driver.
                plugin = plugins.find_for_pod_dir(escaped)
                plugin_name = plugin.name if plugin is not None else unescape_plugin_name(escaped)
                for name in _listdir(os.path.join(base, escaped)):
                    vol_dir = os.path.join(base, escaped, name)
                    if plugin is None:
                        log.warning("found %s of unknown plugin %s; leaving it alone", vol_dir, plugin_name)
                        continue
                    mount_path = plugin.pod_mount_path_on_disk(vol_dir, block)
                    mounted = table.is_mount_point(mount_path)
                    found = desired_mounts.get(mount_path)
                    if found is not None:
                        vtm, dplugin = found
                        if not dplugin.is_present_on_disk(vtm.spec, mount_path, mounted):
                            continue
                        dmp = dplugin.device_mount_path(vtm.spec) if vtm.device_mountable else None
                        # The disk does not say which content a view shows (a ConfigMap may
                        # have changed while we were down): no token, so the reconciler sets
                        # it up once more, which writes nothing when the files are right.
                        spec = replace(vtm.spec, content_generation=None)
                        asw.add_reconstructed(
                            MountedVolume(vtm.volume_id, vtm.pod, vtm.outer_name, spec, vtm.plugin_name,
                                          mount_path, VolumeMountState.MOUNTED, dmp),
                            device_state_of(dmp), None,
                        )
                        out.adopted += 1
                        continue
                    # Not desired: tear it down once allowed, through the plugin's reverse call.
                    spec = plugin.construct_volume_spec(name, vol_dir)
                    if spec is None:
                        if not mounted:
                            continue
                        spec = VolumeSpec(name=name, plugin_name=plugin_name, source=None)
                    pod = _recorded_pod(pod_owner, uid)
                    dm = spec.source is not None and plugin.is_device_mountable(spec)
                    volume_id = plugin.volume_id(spec, pod) if spec.source is not None else f"{plugin_name}/{uid}-{name}"
                    dmp = plugin.device_mount_path(spec) if dm else None
                    asw.add_reconstructed(
                        MountedVolume(volume_id, pod, name, spec, plugin_name, mount_path, VolumeMountState.UNCERTAIN, dmp),
                        device_state_of(dmp), None,
                    )
                    out.uncertain += 1
                    out.cleanup_pods.add(uid)

    # Staged devices whose pods are all gone (a crash between unpublish and unstage).
    for dmp, (vtm, _plugin) in desired_devices.items():
        if table.is_mount_point(dmp) and asw.get_volume(vtm.volume_id) is None:
            asw.add_reconstructed_device(AttachedVolume(vtm.volume_id, vtm.spec, vtm.plugin_name, True,
                                                        DeviceMountState.MOUNTED, None, dmp, frozenset()))
            out.devices += 1
    known_devices = {av.device_mount_path for av in asw.attached_volumes() if av.device_mount_path}
    for plugin in plugins.plugins():
        for staged in plugin.find_staged_devices():
            dmp = staged.device_mount_path
            if dmp in known_devices:
                continue
            present = (table.is_mount_point(dmp) if plugin.device_mount_is_mount_point(staged.spec)
                       else os.path.isdir(dmp))
            if not present:
                continue
            asw.add_reconstructed_device(AttachedVolume(staged.volume_id, staged.spec, plugin.name, True,
                                                        DeviceMountState.UNCERTAIN, None, dmp, frozenset()))
            out.devices += 1
    return out


def take_interrupted(journal) -> list[dict]:
    """The steps the last stop interrupted, from the intent journal (then forgotten): each is
    logged, and returned for ``status``. Every step is idempotent and the disk scan found what
    each one left behind: desired volumes are redone, the rest is undone with the reverse call."""
    if journal is None or not hasattr(journal, "open_intents"):
        return []
    interrupted = journal.open_intents()
    if journal.rebooted:
        log.info("the node rebooted since the last run (boot id changed): staging will be redone")
    out = []
    for rec in interrupted:
        log.warning("step %s of %s (pod %s) was interrupted by the last stop; it will be finished or undone",
                    rec.get("step"), rec.get("volume_id"), rec.get("pod_uid") or "-",
                    extra={"operation": rec.get("step"), "volume": rec.get("volume_id")})
        out.append({k: rec.get(k) for k in ("step", "volume_id", "pod_uid", "t")})
    journal.forget_previous()
    return out


def log_reconstruction(found: Reconstruction, interrupted: int, desired_read_whole: bool,
                       source_problems: Callable[[], str]) -> None:
    """The start-up log lines: what was found and what will happen to it."""
    counts = found.counts()
    if any(counts.values()) or interrupted:
        log.info("reconstructed actual state: %(adopted)d adopted, %(uncertain)d to clean up, %(devices)d staged devices",
                 counts)
    if found.uncertain and not desired_read_whole:
        # The desired state is unknown (its source could not be read): what was found is kept,
        # and re-adopted by the pods that turn out to want it once the source is read whole.
        log.warning("kept %d volumes of %d pods found on disk: the desired state has not been read whole "
                    "(%s); nothing is torn down until it is", found.uncertain, len(found.cleanup_pods),
                    source_problems() or "not read yet")
    elif found.uncertain:
        log.info("%d volumes of %d pods found on disk are not desired: they will be torn down",
                 found.uncertain, len(found.cleanup_pods))
