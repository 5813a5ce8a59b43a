"""Several desired-state sources at once: the manifest dir and the API server, like the
kubelet's static pods beside the API server's pods.

The populator takes one source; this one merges the snapshots of several and keeps each
one's health (``healths()``: ``status`` shows a line per source). Pods are keyed by UID: API
pods by their real UID, manifest pods by theirs, so both kinds coexist. Objects are merged
by key; when two sources define the same key (a PVC ``ns/name`` in a file and in the API),
the first source (the manifest dir: what the operator wrote on this host) wins and the other
is reported in ``errors`` naming both, so nothing is silently shadowed.

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
    pods: dict[str, m.Pod] = {}
    errors: list[m.ManifestError] = []
    maps: dict[str, dict] = {k: {} for k in _MAPS}
    owner: dict[tuple[str, Any], str] = {}
    for snap, name in zip(snaps, names):
        errors.extend(snap.errors)
        for uid, pod in snap.pods.items():
            if uid in pods:
                errors.append(m.ManifestError(str(pod.origin), None, "metadata.uid",
                                              f"uid {uid} is already pod {pods[uid].key} of {owner[('pod', uid)]}; "
                                              f"this pod from {name} is ignored", m.KIND_POD, pod.key))
                continue
            pods[uid] = pod
            owner[("pod", uid)] = name
        for attr in _MAPS:
            target = maps[attr]
            for key, obj in getattr(snap, attr).items():
                if key in target:
                    if target[key] is not obj:
                        errors.append(m.ManifestError(
                            str(getattr(obj, "origin", name)), None, None,
                            f"{getattr(obj, 'kind', attr)} {key if isinstance(key, str) else '/'.join(key)} is also "
                            f"defined by {owner[(attr, key)]}, which wins; this one from {name} is not used",
                            getattr(obj, "kind", None), key if isinstance(key, str) else "/".join(key)))
                    continue
                target[key] = obj
                owner[(attr, key)] = name
    return m.Snapshot(pods, maps["pvs"], maps["pvcs"], maps["secrets"], tuple(errors), generation,
                      configmaps=maps["configmaps"], storageclasses=maps["storageclasses"],
                      csidrivers=maps["csidrivers"], volumesnapshotclasses=maps["volumesnapshotclasses"],
                      volumesnapshots=maps["volumesnapshots"])


class CombinedSource:
    """A ``DesiredStateSource`` over several sources (see the module doc)."""

    def __init__(self, sources: Sequence[Any]) -> None:
        if not sources:
            raise ValueError("CombinedSource needs at least one source")
        self.sources = list(sources)
        self.name = " + ".join(getattr(s, "name", type(s).__name__) for s in self.sources)
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, ...], m.Snapshot] | None = None
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
            merged = merge_snapshots(snaps, [getattr(s, "name", "?") for s in self.sources], self._generation)
            self._cache = (gens, merged)
            return merged

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

