"""Several desired-state sources at once: the manifest dir and the API server, like the
kubelet's static pods beside the API server's pods.

The populator takes one source; this one merges the snapshots of several and keeps each
one's health (``healths()``: ``status`` shows a line per source). Pods are keyed by UID: API
pods by their real UID, manifest pods by theirs, so both kinds coexist. Objects are merged
by key; when two sources define the same key (a PVC ``ns/name`` in a file and in the API),
the first source (the manifest dir: what the operator wrote on this host) wins in the merged
snapshot and the clash is reported in ``errors`` naming both, so nothing is silently shadowed.
A pod still resolves its claims in its own source: ``snapshot_for_pod`` gives the pods of a
source that lost such a key a snapshot in which their source wins (the populator asks it).

The health is the conjunction: a pod removed from a healthy source is torn down only while
every source is readable, which is the start-up rule of the single-source daemon extended to
many (a stale API server also holds back a manifest removal; status says which source).
"""

from __future__ import annotations


import threading
from typing import Any, Callable, Mapping, Sequence

from volumemanager.manifests import models as m
from volumemanager.sources.base import SourceHealth

_MAPS = ("pvs", "pvcs", "secrets", "configmaps", "storageclasses", "csidrivers", "volumesnapshotclasses",
         "volumesnapshots")


def source_health(source: Any) -> SourceHealth:
    health = getattr(source, "health", None)
    if callable(health):
        return health()
    return SourceHealth(getattr(source, "name", type(source).__name__), bool(getattr(source, "synced", True)))


def merge_snapshots(snaps: Sequence[m.Snapshot], names: Sequence[str], generation: int) -> m.Snapshot:
    """One snapshot of several; the first source wins a key, the loser is reported (pure)."""
    return _merge(snaps, names, generation)[0]


def _merge(snaps: Sequence[m.Snapshot], names: Sequence[str],
           generation: int) -> tuple[m.Snapshot, set[int], dict[str, int]]:
    """(the merged snapshot, the indexes of the sources that lost a key, pod uid -> source index)."""
    losers: set[int] = set()
    pod_source: dict[str, int] = {}
    pods: dict[str, m.Pod] = {}
    errors: list[m.ManifestError] = []
    maps: dict[str, dict] = {k: {} for k in _MAPS}
    owner: dict[tuple[str, Any], str] = {}
    for index, (snap, name) in enumerate(zip(snaps, names)):
        errors.extend(snap.errors)
        for uid, pod in snap.pods.items():
            if uid in pods:
                errors.append(m.ManifestError(str(pod.origin), None, "metadata.uid",
                                              f"uid {uid} is already pod {pods[uid].key} of {owner[('pod', uid)]}; "
                                              f"this pod from {name} is ignored", m.KIND_POD, pod.key))
                continue
            pods[uid] = pod
            owner[("pod", uid)] = name
            pod_source[uid] = index
        for attr in _MAPS:
            target = maps[attr]
            for key, obj in getattr(snap, attr).items():
                if key in target:
                    if target[key] is not obj:
                        losers.add(index)
                        errors.append(m.ManifestError(
                            str(getattr(obj, "origin", name)), None, None,
                            f"{getattr(obj, 'kind', attr)} {key if isinstance(key, str) else '/'.join(key)} is defined "
                            f"by both {owner[(attr, key)]} and {name}: the pods of each use their own source's",
                            getattr(obj, "kind", None), key if isinstance(key, str) else "/".join(key)))
                    continue
                target[key] = obj
                owner[(attr, key)] = name
    merged = m.Snapshot(pods, maps["pvs"], maps["pvcs"], maps["secrets"], tuple(errors), generation,
                        configmaps=maps["configmaps"], storageclasses=maps["storageclasses"],
                        csidrivers=maps["csidrivers"], volumesnapshotclasses=maps["volumesnapshotclasses"],
                        volumesnapshots=maps["volumesnapshots"])
    return merged, losers, pod_source


class CombinedSource:
    """A ``DesiredStateSource`` over several sources (see the module doc)."""

    def __init__(self, sources: Sequence[Any]) -> None:
        if not sources:
            raise ValueError("CombinedSource needs at least one source")
        self.sources = list(sources)
        self.name = " + ".join(getattr(s, "name", type(s).__name__) for s in self.sources)
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, ...], m.Snapshot] | None = None
        self._losers: set[int] = set()
        self._pod_source: dict[str, int] = {}
        self._own: dict[int, tuple[tuple[int, ...], m.Snapshot]] = {}  # source index -> its-own-first snapshot
        self._generation = 0

    def start(self, on_change: Callable[[], None]) -> None:
        for s in self.sources:
            s.start(on_change)

    def stop(self) -> None:
        for s in self.sources:
            s.stop()

    def resync(self) -> None:
        for s in self.sources:
            s.resync()

    def snapshot(self) -> m.Snapshot:
        snaps = [s.snapshot() for s in self.sources]
        gens = tuple(s.generation for s in snaps)
        with self._lock:
            if self._cache is not None and self._cache[0] == gens:
                return self._cache[1]
            self._generation += 1  # strictly increasing whenever any source's changes
            merged, self._losers, self._pod_source = _merge(snaps, self._names(), self._generation)
            self._cache = (gens, merged)
            self._own = {}
            return merged

    def _names(self) -> list[str]:
        return [getattr(s, "name", "?") for s in self.sources]

    def snapshot_for_pod(self, uid: str) -> m.Snapshot | None:
        """The snapshot pod ``uid`` resolves its claims in: None (the merged one) unless its
        source lost a key to another source; then one in which its own source wins."""
        with self._lock:
            index = self._pod_source.get(uid)
            if index is None or index not in self._losers or self._cache is None:
                return None
            gens = self._cache[0]
            own = self._own.get(index)
            if own is not None and own[0] == gens:
                return own[1]
        order = [index] + [i for i in range(len(self.sources)) if i != index]
        snaps = [self.sources[i].snapshot() for i in order]
        names = self._names()
        snap = _merge(snaps, [names[i] for i in order], self._cache[1].generation)[0]
        with self._lock:
            self._own[index] = (gens, snap)
        return snap

    @property
    def synced(self) -> bool:
        return all(source_health(s).synced for s in self.sources)

    def healths(self) -> list[SourceHealth]:
        return [source_health(s) for s in self.sources]

    def health(self) -> SourceHealth:
        """Synced when all are; failed since the earliest failure of any."""
        hs = self.healths()
        failed = [h for h in hs if h.failed_since is not None]
        synced = all(h.synced for h in hs)
        if failed:
            first = min(failed, key=lambda h: h.failed_since or 0.0)
            return SourceHealth(self.name, synced, first.failed_since, "; ".join(f"{h.name}: {h.error}" for h in failed),
                                first.failed_since)
        return SourceHealth(self.name, synced, None, None, max((h.since or 0.0) for h in hs) or None)

    def prefer_uid_holders(self, holders: Mapping[str, tuple[str, str]]) -> None:
        for s in self.sources:
            prefer = getattr(s, "prefer_uid_holders", None)
            if callable(prefer):
                prefer(holders)

    def find(self, kind: type) -> Any:
        """The first source of this type (the daemon's status asks for the API server's)."""
        for s in self.sources:
            if isinstance(s, kind):
                return s
        return None


__all__ = ["CombinedSource", "merge_snapshots"]

