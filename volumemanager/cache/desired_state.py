"""Desired state of the world: pods and the volumes they need, with resolved specs.

A pod's volume is either *resolved* (a ``VolumeToMount`` the reconciler can act on) or
*unresolved* (its claim is missing, unbound, ... ) with the reason kept for ``explain``.
Getters return frozen copies so callers iterate without holding the lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterable

from operation_executor.types import PodRef, VolumeToMount


@dataclass(frozen=True)
class UnresolvedVolume:
    """A pod volume that cannot be mounted yet, and why (``reason`` is for people;
    ``waiting_for`` names the missing object, e.g. ``persistentvolumeclaim demo/data``)."""

    outer_name: str
    plugin_name: str | None
    reason: str
    waiting_for: str | None = None


@dataclass(frozen=True)
class DesiredPod:
    pod: PodRef
    volumes: tuple[VolumeToMount, ...]
    unresolved: tuple[UnresolvedVolume, ...] = ()
    source: str | None = None  # e.g. the manifest file, for explain


@dataclass
class _Entry:
    pod: DesiredPod
    volume_ids: frozenset[str] = field(default_factory=frozenset)


class DesiredStateOfWorld:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pods: dict[str, _Entry] = {}
        self._by_key: dict[str, str] = {}  # "ns/name" -> uid
        self._by_volume: dict[str, dict[str, VolumeToMount]] = {}  # volume_id -> {pod uid -> vtm}
        # Volumes with an identity beyond their pods (a PV name or a CSI volume handle): what the
        # controller asks about on every pass, so it never walks the pods' scratch volumes.
        self._persistent: set[str] = set()

    # --- writers (the populator) ----------------------------------------------------------

    def set_pod(self, desired: DesiredPod) -> set[str]:
        """Add or replace a pod; returns the volume ids whose desired state changed."""
        uid = desired.pod.uid
        with self._lock:
            old = self._pods.get(uid)
            if old is not None and old.pod == desired:
                return set()
            changed: set[str] = set()
            if old is not None:
                changed |= self._drop_pod_volumes(uid, old)
                if self._by_key.get(old.pod.pod.key) == uid:
                    del self._by_key[old.pod.pod.key]
            ids = frozenset(v.volume_id for v in desired.volumes)
            for v in desired.volumes:
                self._by_volume.setdefault(v.volume_id, {})[uid] = v
                if _is_persistent(v):
                    self._persistent.add(v.volume_id)
            changed |= ids
            self._pods[uid] = _Entry(desired, ids)
            self._by_key[desired.pod.key] = uid
            return changed

    def remove_pod(self, uid: str) -> set[str]:
        with self._lock:
            old = self._pods.pop(uid, None)
            if old is None:
                return set()
            if self._by_key.get(old.pod.pod.key) == uid:
                del self._by_key[old.pod.pod.key]
            return self._drop_pod_volumes(uid, old)

    def _drop_pod_volumes(self, uid: str, entry: _Entry) -> set[str]:
        for vid in entry.volume_ids:
            pods = self._by_volume.get(vid)
            if pods is not None:
                pods.pop(uid, None)
                if not pods:
                    del self._by_volume[vid]
                    self._persistent.discard(vid)
        return set(entry.volume_ids)

    # --- readers --------------------------------------------------------------------------

    def pod_uids(self) -> set[str]:
        with self._lock:
            return set(self._pods)

    def pods(self) -> list[DesiredPod]:
        with self._lock:
            return [e.pod for e in self._pods.values()]

    def get_pod(self, uid: str) -> DesiredPod | None:
        with self._lock:
            e = self._pods.get(uid)
            return e.pod if e else None

    def find_pod(self, key: str) -> DesiredPod | None:
        """By "namespace/name" (or by UID)."""
        with self._lock:
            uid = self._by_key.get(key, key)
            e = self._pods.get(uid)
            return e.pod if e else None

    def volume_ids(self) -> set[str]:
        with self._lock:
            return set(self._by_volume)

    def volume_exists(self, volume_id: str) -> bool:
        with self._lock:
            return volume_id in self._by_volume

    def pod_exists_in_volume(self, volume_id: str, pod_uid: str) -> bool:
        with self._lock:
            return pod_uid in self._by_volume.get(volume_id, {})

    def volumes_to_mount(self, volume_ids: Iterable[str] | None = None) -> list[VolumeToMount]:
        with self._lock:
            if volume_ids is None:
                return [v for pods in self._by_volume.values() for v in pods.values()]
            out: list[VolumeToMount] = []
            for vid in volume_ids:
                pods = self._by_volume.get(vid)
                if pods:
                    out.extend(pods.values())
            return out

    def persistent_volumes_to_mount(self) -> list[VolumeToMount]:
        """The desired volumes with a PV name or a CSI volume handle (O(those), not O(all))."""
        with self._lock:
            return [v for vid in self._persistent for v in self._by_volume.get(vid, {}).values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._pods)


def _is_persistent(vtm: VolumeToMount) -> bool:
    return bool(vtm.spec.pv_name or getattr(vtm.spec.source, "volume_handle", None))
