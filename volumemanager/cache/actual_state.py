"""Actual state of the world: which volumes are (possibly) staged and (possibly) mounted for
which pods, plus the last operation result per (volume, pod) for status and explain.

It implements ``operation_executor.updater.ActualStateUpdater``; operations write only through
those methods. Every change bumps ``version`` and notifies ``changed`` so that
``wait_for_mount`` wakes at once instead of polling.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from operation_executor.errors import OperationError
from operation_executor.states import DeviceMountState, VolumeMountState
from operation_executor.types import AttachedVolume, FsGroupResult, MarkDeviceOpts, MarkVolumeOpts, MountedVolume, PodRef, VolumeSpec


@dataclass(frozen=True)
class OperationResult:
    operation: str
    error: OperationError | None
    at: float  # wall-clock time of this result, for people
    since: float  # wall-clock time since when the same error keeps coming back


@dataclass
class _Pod:
    pod: PodRef
    outer_name: str
    spec: VolumeSpec
    mount_path: str
    state: VolumeMountState
    fs_group: FsGroupResult | None = None  # set after the mount operation applied the fsGroup


@dataclass
class _Volume:
    volume_id: str
    spec: VolumeSpec
    plugin_name: str
    device_mountable: bool
    device_state: DeviceMountState = DeviceMountState.NOT_MOUNTED
    device_path: str | None = None
    device_mount_path: str | None = None
    pods: dict[str, _Pod] = field(default_factory=dict)
    reconstructed: bool = False
    size_bytes: int | None = None


class ActualStateOfWorld:
    def __init__(self, on_change: Callable[[str], None] | None = None) -> None:
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        self.version = 0
        self._volumes: dict[str, _Volume] = {}
        self._results: dict[tuple[str, str | None], OperationResult] = {}
        # volume id -> the pod uids (None: the volume's own key) it has results for: forgetting a
        # volume's results looked at every result (a teardown of 10,000 volumes: 10,000 x 10,000).
        self._result_keys: dict[str, set[str | None]] = {}
        # Per-pod indexes (pod uid -> volume ids; "namespace/name" -> pod uids) so that a question
        # about one pod (explain) does not walk every volume; kept by _add_pod/_drop_pod only.
        self._vids_by_uid: dict[str, set[str]] = {}
        self._uids_by_key: dict[str, set[str]] = {}
        self._on_change = on_change
        self._batched: list[str] | None = None  # volume ids touched inside ``batch``

    def set_on_change(self, cb: Callable[[str], None]) -> None:
        self._on_change = cb

    def _touch(self, volume_id: str) -> None:
        if self._batched is not None:
            self._batched.append(volume_id)
            return
        self._bump()
        if self._on_change is not None:
            self._on_change(volume_id)

    def _bump(self) -> None:
        if self._batched is not None:
            return  # published once when the batch ends
        self.version += 1
        self.changed.notify_all()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Apply the updates made inside as one change, under one lock: one version bump
        and one wake-up of the waiters (``wait``, the mount watcher) for a whole batch of
        operations instead of one per volume. Only for quick updates: nothing slow may run
        inside (every reader waits)."""
        with self._lock:
            if self._batched is not None:
                yield  # nested: the outer batch publishes
                return
            self._batched = []
            try:
                yield
            finally:
                touched, self._batched = self._batched, None
                self._bump()
                if self._on_change is not None:
                    for volume_id in touched:
                        self._on_change(volume_id)

    def _volume(self, volume_id: str, spec: VolumeSpec, plugin_name: str, device_mountable: bool) -> _Volume:
        v = self._volumes.get(volume_id)
        if v is None:
            v = _Volume(volume_id, spec, plugin_name, device_mountable)
            self._volumes[volume_id] = v
        return v

    def _add_pod(self, v: _Volume, p: _Pod) -> None:
        """The one place a pod entry is added (or replaced), with the per-pod indexes."""
        old = v.pods.get(p.pod.uid)
        if old is not None and old.pod.key != p.pod.key:
            self._unindex_key(old.pod.key, p.pod.uid, v.volume_id)
        v.pods[p.pod.uid] = p
        self._vids_by_uid.setdefault(p.pod.uid, set()).add(v.volume_id)
        self._uids_by_key.setdefault(p.pod.key, set()).add(p.pod.uid)

    def _drop_pod(self, v: _Volume, pod_uid: str) -> None:
        """The one place a pod entry is removed, with the per-pod indexes."""
        p = v.pods.pop(pod_uid, None)
        if p is None:
            return
        vids = self._vids_by_uid.get(pod_uid)
        if vids is not None:
            vids.discard(v.volume_id)
            if not vids:
                del self._vids_by_uid[pod_uid]
        self._unindex_key(p.pod.key, pod_uid, v.volume_id)

    def _unindex_key(self, key: str, pod_uid: str, volume_id: str) -> None:
        # The key keeps the uid while another volume of that uid is still under this key.
        if any(self._volumes[vid].pods.get(pod_uid) is not None and self._volumes[vid].pods[pod_uid].pod.key == key
               for vid in self._vids_by_uid.get(pod_uid, ()) if vid != volume_id and vid in self._volumes):
            return
        uids = self._uids_by_key.get(key)
        if uids is not None:
            uids.discard(pod_uid)
            if not uids:
                del self._uids_by_key[key]

    def _maybe_drop(self, volume_id: str) -> None:
        v = self._volumes.get(volume_id)
        if v is not None and not v.pods and not (v.device_mountable and v.device_state.may_be_mounted):
            del self._volumes[volume_id]

    # --- ActualStateUpdater ---------------------------------------------------------------

    def mark_device_mounted(self, opts: MarkDeviceOpts) -> None:
        self._set_device(opts, DeviceMountState.MOUNTED)

    def mark_device_uncertain(self, opts: MarkDeviceOpts) -> None:
        self._set_device(opts, DeviceMountState.UNCERTAIN)

    def _set_device(self, opts: MarkDeviceOpts, state: DeviceMountState) -> None:
        volume_id, spec, plugin_name = opts.volume_id, opts.spec, opts.plugin_name
        device_path, device_mount_path = opts.device_path, opts.device_mount_path
        with self._lock:
            v = self._volume(volume_id, spec, plugin_name, True)
            v.device_mountable = True
            v.device_state = state
            if device_path:
                v.device_path = device_path
            if device_mount_path:
                v.device_mount_path = device_mount_path
            self._touch(volume_id)

    def mark_device_unmounted(self, volume_id: str) -> None:
        with self._lock:
            v = self._volumes.get(volume_id)
            if v is None:
                return
            v.device_state = DeviceMountState.NOT_MOUNTED
            self._maybe_drop(volume_id)
            self._touch(volume_id)

    def mark_volume_mounted(self, opts: MarkVolumeOpts) -> None:
        self._set_pod(opts, VolumeMountState.MOUNTED)

    def mark_volume_uncertain(self, opts: MarkVolumeOpts) -> None:
        self._set_pod(opts, VolumeMountState.UNCERTAIN)

    def _set_pod(self, o: MarkVolumeOpts, state: VolumeMountState) -> None:
        with self._lock:
            v = self._volume(o.volume_id, o.spec, o.plugin_name, o.device_mountable)
            old = v.pods.get(o.pod.uid)
            self._add_pod(v, _Pod(o.pod, o.outer_name, o.spec, o.mount_path, state,
                                  old.fs_group if old is not None else None))
            self._touch(o.volume_id)

    def mark_volume_unmounted(self, volume_id: str, pod_uid: str) -> None:
        with self._lock:
            v = self._volumes.get(volume_id)
            if v is None:
                return
            self._drop_pod(v, pod_uid)
            self._maybe_drop(volume_id)
            self._touch(volume_id)

    def mark_fs_group(self, volume_id: str, pod_uid: str, result: FsGroupResult) -> None:
        with self._lock:
            v = self._volumes.get(volume_id)
            p = v.pods.get(pod_uid) if v is not None else None
            if p is not None:
                p.fs_group = result
                self._touch(volume_id)

    def fs_group(self, volume_id: str, pod_uid: str) -> FsGroupResult | None:
        """The fsGroup result of the last set-up of (volume, pod); None when none was applied."""
        with self._lock:
            v = self._volumes.get(volume_id)
            p = v.pods.get(pod_uid) if v is not None else None
            return p.fs_group if p is not None else None

    def mark_volume_size(self, volume_id: str, size_bytes: int) -> None:
        with self._lock:
            v = self._volumes.get(volume_id)
            if v is not None and v.size_bytes != size_bytes:
                v.size_bytes = size_bytes
                self._touch(volume_id)

    def size_bytes(self, volume_id: str) -> int | None:
        with self._lock:
            v = self._volumes.get(volume_id)
            return v.size_bytes if v else None

    def record_result(self, volume_id: str, pod_uid: str | None, operation: str, error: OperationError | None) -> None:
        now = time.time()
        with self._lock:
            prev = self._results.get((volume_id, pod_uid))
            since = now
            if prev is not None and prev.error is not None and error is not None and str(prev.error) == str(error):
                since = prev.since
            self._results[(volume_id, pod_uid)] = OperationResult(operation, error, now, since)
            self._result_keys.setdefault(volume_id, set()).add(pod_uid)
            self._bump()

    # --- reconstruction -------------------------------------------------------------------

    def add_reconstructed(self, mv: MountedVolume, device_state: DeviceMountState, device_path: str | None) -> None:
        """Adopt a volume found on disk at start-up. Never overwrites what an operation
        already recorded (an operation's knowledge is newer than the disk scan's)."""
        with self._lock:
            v = self._volume(mv.volume_id, mv.spec, mv.plugin_name, mv.device_mount_path is not None)
            v.reconstructed = True
            if mv.device_mount_path is not None and v.device_state is DeviceMountState.NOT_MOUNTED:
                v.device_state = device_state
                v.device_mount_path = mv.device_mount_path
                v.device_path = v.device_path or device_path
            if mv.pod.uid not in v.pods:
                self._add_pod(v, _Pod(mv.pod, mv.outer_name, mv.spec, mv.mount_path, mv.state))
            self._touch(mv.volume_id)

    def add_reconstructed_device(self, av: AttachedVolume) -> None:
        with self._lock:
            v = self._volume(av.volume_id, av.spec, av.plugin_name, True)
            v.reconstructed = True
            if v.device_state is DeviceMountState.NOT_MOUNTED:
                v.device_state = av.device_state
                v.device_mount_path = av.device_mount_path
                v.device_path = v.device_path or av.device_path
            self._touch(av.volume_id)

    # --- readers (copies) -----------------------------------------------------------------

    def volume_ids(self) -> set[str]:
        with self._lock:
            return set(self._volumes)

    def get_volume(self, volume_id: str) -> AttachedVolume | None:
        with self._lock:
            v = self._volumes.get(volume_id)
            return self._attached(v) if v else None

    def attached_volumes(self, volume_ids=None) -> list[AttachedVolume]:
        with self._lock:
            vols = self._volumes.values() if volume_ids is None else filter(None, map(self._volumes.get, volume_ids))
            return [self._attached(v) for v in vols]

    def mounted_volumes(self, volume_ids=None) -> list[MountedVolume]:
        """Every pod mount that may be mounted (mounted or uncertain)."""
        with self._lock:
            vols = self._volumes.values() if volume_ids is None else filter(None, map(self._volumes.get, volume_ids))
            return [self._mounted(v, p) for v in vols for p in v.pods.values() if p.state.may_be_mounted]

    def mounted_keys(self, volume_ids=None) -> list[tuple[str, str]]:
        """(volume id, pod uid) of every pod view that may be mounted, without copying any: what
        the reconciler's full pass walks (``mounted_volumes`` built 10,000 copies a minute)."""
        with self._lock:
            vols = self._volumes.values() if volume_ids is None else filter(None, map(self._volumes.get, volume_ids))
            return [(v.volume_id, uid) for v in vols for uid, p in v.pods.items() if p.state.may_be_mounted]

    def staged_volumes(self, volume_ids=None) -> list[AttachedVolume]:
        """``attached_volumes`` of the device-mountable volumes whose stage may be mounted only."""
        with self._lock:
            vols = self._volumes.values() if volume_ids is None else filter(None, map(self._volumes.get, volume_ids))
            return [self._attached(v) for v in vols if v.device_mountable and v.device_state.may_be_mounted]

    def known_mount_paths(self) -> set[str]:
        """Every path the actual state accounts for (pod mounts that may be mounted, staging
        mounts), for ``status``'s orphans: one pass under the lock, no copies of the volumes."""
        with self._lock:
            paths = {v.device_mount_path for v in self._volumes.values() if v.device_mount_path}
            paths.update(p.mount_path for v in self._volumes.values() for p in v.pods.values()
                         if p.state.may_be_mounted)
            return paths

    def pod_of_uid(self, pod_uid: str) -> PodRef | None:
        """The pod (as last recorded) one of whose volumes may be mounted under ``pod_uid``;
        None when none is. From the per-pod index: a question about one UID (is it taken on
        this node, and by whom?) must not copy every volume (``mounted_volumes``)."""
        with self._lock:
            for vid in self._vids_by_uid.get(pod_uid, ()):
                v = self._volumes.get(vid)
                p = v.pods.get(pod_uid) if v is not None else None
                if p is not None and p.state.may_be_mounted:
                    return p.pod
            return None

    def mounted_volumes_of_pod(self, key_or_uid: str) -> list[MountedVolume]:
        """The pod mounts that may be mounted of one pod, by "namespace/name" or by UID: from
        the per-pod indexes, in time proportional to that pod's volumes."""
        with self._lock:
            uids = set(self._uids_by_key.get(key_or_uid, ()))
            if key_or_uid in self._vids_by_uid:
                uids.add(key_or_uid)
            out = []
            for uid in uids:
                for vid in self._vids_by_uid.get(uid, ()):
                    v = self._volumes.get(vid)
                    p = v.pods.get(uid) if v is not None else None
                    if p is not None and p.state.may_be_mounted and key_or_uid in (p.pod.key, uid):
                        out.append(self._mounted(v, p))
            return out

    def staged_devices(self) -> list[tuple[str, str]]:
        """(volume id, device path) of every certainly staged device: a device event checks
        these few strings instead of copying every volume's entry."""
        with self._lock:
            return [
                (vid, v.device_path)
                for vid, v in self._volumes.items()
                if v.device_mountable and v.device_state is DeviceMountState.MOUNTED and v.device_path
            ]

    def count_mounted(self, pairs: Iterable[tuple[str, str]]) -> int:
        """How many of the (volume id, pod uid) pairs are certainly mounted: one lock
        acquisition for all of them (a summary must not contend with the operations)."""
        with self._lock:
            n = 0
            for volume_id, pod_uid in pairs:
                v = self._volumes.get(volume_id)
                p = v.pods.get(pod_uid) if v is not None else None
                if p is not None and p.state is VolumeMountState.MOUNTED:
                    n += 1
            return n

    def pod_state(self, volume_id: str, pod_uid: str) -> VolumeMountState:
        with self._lock:
            v = self._volumes.get(volume_id)
            p = v.pods.get(pod_uid) if v else None
            return p.state if p else VolumeMountState.NOT_MOUNTED

    def content_generation(self, volume_id: str, pod_uid: str) -> str | None:
        """The content token the pod's view was last set up with (``VolumeSpec.content_generation``);
        None when unknown (not mounted, reconstructed from disk, or content not ours)."""
        with self._lock:
            v = self._volumes.get(volume_id)
            p = v.pods.get(pod_uid) if v else None
            return p.spec.content_generation if p else None

    def device_state(self, volume_id: str) -> DeviceMountState:
        with self._lock:
            v = self._volumes.get(volume_id)
            return v.device_state if v else DeviceMountState.NOT_MOUNTED

    def get_mount(self, volume_id: str, pod_uid: str) -> MountedVolume | None:
        with self._lock:
            v = self._volumes.get(volume_id)
            p = v.pods.get(pod_uid) if v else None
            return self._mounted(v, p) if p else None

    def result(self, volume_id: str, pod_uid: str | None) -> OperationResult | None:
        with self._lock:
            return self._results.get((volume_id, pod_uid))

    def forget_volume_results(self, volume_id: str) -> None:
        with self._lock:
            for pod_uid in self._result_keys.pop(volume_id, ()):
                self._results.pop((volume_id, pod_uid), None)

    @staticmethod
    def _attached(v: _Volume) -> AttachedVolume:
        return AttachedVolume(
            volume_id=v.volume_id,
            spec=v.spec,
            plugin_name=v.plugin_name,
            device_mountable=v.device_mountable,
            device_state=v.device_state,
            device_path=v.device_path,
            device_mount_path=v.device_mount_path,
            pod_uids=frozenset(uid for uid, p in v.pods.items() if p.state.may_be_mounted),
        )

    @staticmethod
    def _mounted(v: _Volume, p: _Pod) -> MountedVolume:
        return MountedVolume(
            volume_id=v.volume_id,
            pod=p.pod,
            outer_name=p.outer_name,
            spec=p.spec,
            plugin_name=v.plugin_name,
            mount_path=p.mount_path,
            state=p.state,
            device_mount_path=v.device_mount_path if v.device_mountable else None,
        )
