"""Rebuild the actual state at start-up from the root dir and /proc/self/mountinfo.

Run after the desired state has been read and before the first pass. A pod volume that is
desired and found mounted is *adopted* as mounted: no mount or unmount is issued, so a daemon
restart leaves every mount (and its mount ID) as it was. Anything found that is not desired is
recorded as *uncertain*, which makes the reconciler tear it down with the plugin's reverse
call once it is allowed to unmount. Nothing here mounts, unmounts or deletes.
"""

from __future__ import annotations

import json
import logging
import os

from operation_executor.states import DeviceMountState, VolumeMountState
from operation_executor.types import AttachedVolume, MountedVolume, PodRef, VolumeSpec
from volumemanager.plugin_host import unescape_plugin_name

log = logging.getLogger(__name__)

CSI = "kubernetes.io/csi"
LOCAL = "kubernetes.io/local-volume"
EMPTY_DIR = "kubernetes.io/empty-dir"


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _csi_spec_from_disk(name: str, vol_data: dict) -> VolumeSpec | None:
    from volumemanager.manifests.models import CSISource

    driver = vol_data.get("driverName")
    handle = vol_data.get("volumeHandle")
    if not isinstance(driver, str) or not driver:
        return None
    ephemeral = vol_data.get("volumeLifecycleMode") == "Ephemeral"
    source = CSISource(driver=driver, volume_handle=None if ephemeral else handle, fs_type=None,
                       volume_attributes={}, read_only=False)
    return VolumeSpec(name=vol_data.get("specVolID") or name, plugin_name=CSI, source=source, pv_name=name)


def _recorded_pod(vm, uid: str) -> PodRef:
    """The pod a UID found on disk belonged to, from the owner record; else unknown ("?"),
    which never keeps another pod from that UID."""
    owners = getattr(vm, "pod_owners", None)
    key = owners.get(uid) if owners is not None else None
    if key and key.count("/") == 1:
        namespace, name = key.split("/")
        return PodRef(uid, namespace, name)
    return PodRef(uid, "?", uid)


def reconstruct_actual_state(vm) -> dict:
    """Fill ``vm.asw`` from disk. Returns counts for the log."""
    host, plugins, asw = vm.host, vm.plugins, vm.asw
    table = vm.mounter.mount_table()
    desired_mounts: dict[str, object] = {}
    desired_devices: dict[str, object] = {}
    for vtm in vm.dsw.volumes_to_mount():
        try:
            plugin = plugins.find(vtm.plugin_name)
        except KeyError:
            continue
        desired_mounts[plugin.mount_path(vtm.spec, vtm.pod, vtm.outer_name)] = (vtm, plugin)
        if vtm.device_mountable:
            dmp = plugin.device_mount_path(vtm.spec)
            if dmp:
                desired_devices[dmp] = (vtm, plugin)
    counts = {"adopted": 0, "uncertain": 0, "devices": 0, "interrupted": 0}
    cleanup_pods: set[str] = set()

    def device_state_of(path: str | None) -> DeviceMountState:
        return DeviceMountState.MOUNTED if path and table.is_mount_point(path) else DeviceMountState.UNCERTAIN

    for uid in _listdir(host.pods_dir):
        for kind in ("volumes", "volumeDevices"):
            base = os.path.join(host.pods_dir, uid, kind)
            for escaped in _listdir(base):
                plugin_name = unescape_plugin_name(escaped)
                for name in _listdir(os.path.join(base, escaped)):
                    vol_dir = os.path.join(base, escaped, name)
                    mount_path = os.path.join(vol_dir, "mount") if plugin_name == CSI and kind == "volumes" else vol_dir
                    mounted = table.is_mount_point(mount_path)
                    found = desired_mounts.get(mount_path)
                    if found is not None:
                        vtm, plugin = found
                        # emptyDir on disk is a plain directory: its existence is the mount.
                        present = mounted or (plugin_name == EMPTY_DIR and getattr(vtm.spec.source, "medium", "") != "Memory")
                        if not present:
                            continue
                        dmp = plugin.device_mount_path(vtm.spec) if vtm.device_mountable else None
                        asw.add_reconstructed(
                            MountedVolume(vtm.volume_id, vtm.pod, vtm.outer_name, vtm.spec, vtm.plugin_name,
                                          mount_path, VolumeMountState.MOUNTED, dmp),
                            device_state_of(dmp), None,
                        )
                        counts["adopted"] += 1
                        continue
                    # Not desired: tear it down once allowed, through the plugin's reverse call.
                    spec = None
                    if plugin_name == CSI:
                        spec = _csi_spec_from_disk(name, _read_json(os.path.join(vol_dir, "vol_data.json")))
                        if spec is None and not mounted:
                            continue
                    if spec is None:
                        spec = VolumeSpec(name=name, plugin_name=plugin_name, source=None)
                    try:
                        plugin = plugins.find(plugin_name)
                    except KeyError:
                        log.warning("found %s of unknown plugin %s; leaving it alone", vol_dir, plugin_name)
                        continue
                    pod = _recorded_pod(vm, uid)
                    dm = plugin_name == CSI and spec.source is not None and spec.source.volume_handle is not None
                    volume_id = plugin.volume_id(spec, pod) if spec.source is not None else f"{plugin_name}/{uid}-{name}"
                    dmp = plugin.device_mount_path(spec) if dm else None
                    asw.add_reconstructed(
                        MountedVolume(volume_id, pod, name, spec, plugin_name, mount_path, VolumeMountState.UNCERTAIN, dmp),
                        device_state_of(dmp), None,
                    )
                    counts["uncertain"] += 1
                    cleanup_pods.add(uid)

    # Staged devices whose pods are all gone (a crash between unpublish and unstage).
    for dmp, (vtm, plugin) in desired_devices.items():
        if table.is_mount_point(dmp) and asw.get_volume(vtm.volume_id) is None:
            asw.add_reconstructed_device(AttachedVolume(vtm.volume_id, vtm.spec, vtm.plugin_name, True,
                                                        DeviceMountState.MOUNTED, None, dmp, frozenset()))
            counts["devices"] += 1
    known_devices = {av.device_mount_path for av in asw.attached_volumes() if av.device_mount_path}
    local_mounts = os.path.join(host.plugin_dir(LOCAL), "mounts")
    for pv in _listdir(local_mounts):
        dmp = os.path.join(local_mounts, pv)
        if dmp in known_devices or not table.is_mount_point(dmp):
            continue
        spec = VolumeSpec(name=pv, plugin_name=LOCAL, source=None, pv_name=pv)
        asw.add_reconstructed_device(AttachedVolume(f"{LOCAL}/{pv}", spec, LOCAL, True, DeviceMountState.UNCERTAIN,
                                                    None, dmp, frozenset()))
        counts["devices"] += 1
    csi_dir = host.plugin_dir(CSI)
    for driver in _listdir(csi_dir):
        for sha in _listdir(os.path.join(csi_dir, driver)):
            dmp = os.path.join(csi_dir, driver, sha, "globalmount")
            if dmp in known_devices or not os.path.isdir(dmp):
                continue
            vol_data = _read_json(os.path.join(csi_dir, driver, sha, "vol_data.json"))
            spec = _csi_spec_from_disk(vol_data.get("volumeHandle", sha), vol_data)
            if spec is None or spec.source.volume_handle is None:
                continue
            volume_id = f"{CSI}/{spec.source.driver}^{spec.source.volume_handle}"
            asw.add_reconstructed_device(AttachedVolume(volume_id, spec, CSI, True, DeviceMountState.UNCERTAIN,
                                                        None, dmp, frozenset()))
            counts["devices"] += 1
    journal = getattr(vm, "journal", None)
    if journal is not None and hasattr(journal, "open_intents"):
        interrupted = journal.open_intents()
        counts["interrupted"] = len(interrupted)
        if journal.rebooted:
            log.info("the node rebooted since the last run (boot id changed): staging will be redone")
        for rec in interrupted:
            # Every step is idempotent and the disk scan above found what each one left
            # behind: desired volumes are redone, the rest is undone with the reverse call.
            log.warning("step %s of %s (pod %s) was interrupted by the last stop; it will be finished or undone",
                        rec.get("step"), rec.get("volume_id"), rec.get("pod_uid") or "-",
                        extra={"operation": rec.get("step"), "volume": rec.get("volume_id")})
            vm.interrupted_at_start.append({k: rec.get(k) for k in ("step", "volume_id", "pod_uid", "t")})
        journal.forget_previous()
    if any(counts.values()):
        log.info("reconstructed actual state: %(adopted)d adopted, %(uncertain)d to clean up, %(devices)d staged devices",
                 counts)
    populator = getattr(vm, "populator", None)
    if counts["uncertain"] and populator is not None and not populator.has_added_pods:
        # The desired state is unknown (its source could not be read): what was found is kept,
        # and re-adopted by the pods that turn out to want it once the source is read whole.
        log.warning("kept %d volumes of %d pods found on disk: the desired state has not been read whole "
                    "(%s); nothing is torn down until it is", counts["uncertain"], len(cleanup_pods),
                    "; ".join(h.describe() for h in populator.source_healths() if not h.ok) or "not read yet")
    elif counts["uncertain"]:
        log.info("%d volumes of %d pods found on disk are not desired: they will be torn down",
                 counts["uncertain"], len(cleanup_pods))
    return counts
