"""The populator: turns a desired-state source's snapshot into the desired state of the world.

It resolves each pod volume to a plugin-ready ``VolumeSpec`` (claim -> bound PV -> source) and
keeps, for each volume that cannot be resolved yet, the reason (``explain`` shows it). The
source is pluggable (``volumemanager.sources.base.DesiredStateSource``): today a manifest
directory, later an API server watch; the populator does not care where snapshots come from.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Mapping

from operation_executor.plugin import PluginRegistry
from operation_executor.types import PodRef, VolumeSpec, VolumeToMount
from volumemanager.cache.desired_state import DesiredPod, DesiredStateOfWorld, UnresolvedVolume
from volumemanager.manifests import models as m

log = logging.getLogger(__name__)

EMPTY_DIR = "kubernetes.io/empty-dir"
HOST_PATH = "kubernetes.io/host-path"
NFS = "kubernetes.io/nfs"
CSI = "kubernetes.io/csi"
LOCAL = "kubernetes.io/local-volume"


class Unresolvable(Exception):
    def __init__(self, reason: str, waiting_for: str | None = None, plugin_name: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.waiting_for = waiting_for
        self.plugin_name = plugin_name


def _plugin_for_source(source: object) -> str:
    if isinstance(source, m.EmptyDirSource):
        return EMPTY_DIR
    if isinstance(source, m.HostPathSource):
        return HOST_PATH
    if isinstance(source, m.NFSSource):
        return NFS
    if isinstance(source, m.CSISource):
        return CSI
    if isinstance(source, m.LocalSource):
        return LOCAL
    raise Unresolvable(f"unsupported volume source {type(source).__name__}")


def resolve_volume(pod: m.Pod, vol: m.PodVolume, snap: m.Snapshot) -> VolumeSpec:
    """The spec of one pod volume, or ``Unresolvable`` with the reason."""
    src = vol.source
    if not isinstance(src, m.PVCSource):
        plugin = _plugin_for_source(src)
        read_only = bool(getattr(src, "read_only", False))
        return VolumeSpec(name=vol.name, plugin_name=plugin, source=src, read_only=read_only)
    claim_key = f"{pod.namespace}/{src.claim_name}"
    pvc = snap.pvcs.get((pod.namespace, src.claim_name))
    if pvc is None:
        raise Unresolvable(
            f"persistentvolumeclaim {claim_key} not found", waiting_for=f"persistentvolumeclaim {claim_key}"
        )
    if not pvc.volume_name:
        raise Unresolvable(
            f"persistentvolumeclaim {claim_key} is not bound (spec.volumeName is empty)",
            waiting_for=f"persistentvolumeclaim {claim_key} to be bound",
        )
    pv = snap.pvs.get(pvc.volume_name)
    if pv is None:
        raise Unresolvable(
            f"persistentvolume {pvc.volume_name} (bound to claim {claim_key}) not found",
            waiting_for=f"persistentvolume {pvc.volume_name}",
        )
    if pv.claim_ref is not None and pv.claim_ref != (pvc.namespace, pvc.name):
        raise Unresolvable(
            f"persistentvolume {pv.name} is reserved for claim {pv.claim_ref[0]}/{pv.claim_ref[1]}, not {claim_key}"
        )
    claim_mode = pvc.volume_mode or m.FILESYSTEM
    if claim_mode != pv.volume_mode:
        raise Unresolvable(
            f"volumeMode mismatch: claim {claim_key} wants {claim_mode}, persistentvolume {pv.name} is {pv.volume_mode}"
        )
    plugin = _plugin_for_source(pv.source)
    read_only = src.read_only or bool(getattr(pv.source, "read_only", False))
    return VolumeSpec(
        name=pv.name,
        plugin_name=plugin,
        source=pv.source,
        read_only=read_only,
        volume_mode=pv.volume_mode,
        mount_options=pv.mount_options,
        pv_name=pv.name,
        claim=claim_key,
        access_modes=pvc.access_modes or pv.access_modes,
        capacity_bytes=pv.capacity_bytes,
    )


def resolve_pod(pod: m.Pod, snap: m.Snapshot, plugins: PluginRegistry) -> DesiredPod:
    ref = PodRef(pod.uid, pod.namespace, pod.name)
    resolved: list[VolumeToMount] = []
    unresolved: list[UnresolvedVolume] = []
    for vol in pod.volumes:
        try:
            spec = resolve_volume(pod, vol, snap)
            try:
                plugin = plugins.find(spec.plugin_name)
            except KeyError:
                raise Unresolvable(f"volume plugin {spec.plugin_name} is not available", plugin_name=spec.plugin_name)
            resolved.append(
                VolumeToMount(
                    volume_id=plugin.volume_id(spec, ref),
                    pod=ref,
                    outer_name=vol.name,
                    spec=spec,
                    plugin_name=spec.plugin_name,
                    device_mountable=plugin.is_device_mountable(spec),
                )
            )
        except Unresolvable as e:
            unresolved.append(UnresolvedVolume(vol.name, e.plugin_name, e.reason, e.waiting_for))
    return DesiredPod(ref, tuple(resolved), tuple(unresolved), source=str(pod.origin))


def _same_objects(old: Mapping, new: Mapping) -> bool:
    """Whether two snapshot maps hold the very same objects under the same keys."""
    return len(old) == len(new) and all(old.get(k) is v for k, v in new.items())


class DesiredStatePopulator:
    """Keeps the DSW equal to the source's latest snapshot; reports which volumes changed."""

    def __init__(
        self,
        source,
        dsw: DesiredStateOfWorld,
        plugins: PluginRegistry,
        on_volumes_changed: Callable[[set[str]], None],
    ) -> None:
        self.source = source
        self._dsw = dsw
        self._plugins = plugins
        self._on_volumes_changed = on_volumes_changed
        self._lock = threading.Lock()
        self._generation: int | None = None
        self._snapshot: m.Snapshot = m.Snapshot.empty()
        self._populated = False
        # uid -> the Pod object the DSW entry was resolved from. The store hands out the same
        # objects for files that did not change, so a pod whose object (and every claim and
        # volume) is the one resolved last time needs no work: a change costs in proportion
        # to what changed, not to the number of pods.
        self._resolved_from: dict[str, m.Pod] = {}

    def start(self) -> None:
        self.source.start(self.sync)
        self.sync()

    def stop(self) -> None:
        self.source.stop()

    @property
    def has_added_pods(self) -> bool:
        """True once the source's first full read has reached the DSW: before that nothing
        may be unmounted, or a restart would tear down volumes of running pods."""
        return self._populated

    @property
    def snapshot(self) -> m.Snapshot:
        return self._snapshot

    def sync(self, force: bool = False) -> set[str]:
        with self._lock:
            snap = self.source.snapshot()
            if not force and snap.generation == self._generation:
                if self.source.synced:
                    self._populated = True
                return set()
            changed: set[str] = set()
            # Resolution reads the pod, the claims and the volumes (never another pod).
            reuse = (not force and _same_objects(self._snapshot.pvcs, snap.pvcs)
                     and _same_objects(self._snapshot.pvs, snap.pvs))
            for uid, pod in snap.pods.items():
                if reuse and self._resolved_from.get(uid) is pod:
                    continue
                changed |= self._dsw.set_pod(resolve_pod(pod, snap, self._plugins))
                self._resolved_from[uid] = pod
            for uid in self._dsw.pod_uids() - set(snap.pods):
                changed |= self._dsw.remove_pod(uid)
                self._resolved_from.pop(uid, None)
            self._snapshot = snap
            self._generation = snap.generation
            if self.source.synced:
                self._populated = True
        if changed:
            self._on_volumes_changed(changed)
        return changed

    def get_secret(self, ref):
        secret = self._snapshot.secret(ref)
        return dict(secret.data) if secret is not None else None
